"""Cold feature extraction through graft's real path, against the forward pass alone (the ceiling).

Per backbone (lite0/lite1/lite2, bundled ImageNet weights) and per graft tree ("before": a git
revision unpacked to a temporary folder, default HEAD; "after": this working tree), each
measurement is a fresh process that extracts `--photos` real photos (half ants/bees train/, half
trashnet train/; nothing from val/ or test/) into an empty feature cache with
`graft.features.extract.extract_features`: the loader's decoding workers, the preprocessing, the
onnxruntime engine (its export already on disk, as after a first run), the cache writes. It prints:
- photos/s of the extraction (the session already built) and `cold` photos/s counting the
  session's build and self-check too (what a first extraction in a process pays);
- where the time went: the consumer waiting for decoded batches, in the forward pass + cache
  write, decode (read_image: JPEG decode, EXIF, RGB) and resize+crop per photo on one core;
- the ceiling: the same engine on the same photos already decoded and normalised, batch by batch.
The trees alternate which goes first each round (the machine is shared and swings): medians.

    .venv/bin/python bench/extraction.py [--models lite0,lite1,lite2] [--photos 128] [--rounds 3]
                                         [--before HEAD | --before none]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GRAFT_BENCH_SHARED", REPO.parent / "shared")) / "datasets"
SETS = (DATA / "hymenoptera_data" / "train", DATA / "trashnet" / "train")


def photos(n: int) -> list[str]:
    """n photos, half from each set, spread evenly over its sorted files."""
    out = []
    for i, root in enumerate(SETS):
        files = sorted(str(p) for p in root.glob("*/*.jp*g"))
        want = n // 2 + (n % 2 if i == 0 else 0)
        out += [files[int(k * len(files) / want)] for k in range(want)]
    return out


# --- one measurement, in its own process, with one tree's graft ---------------------------------

def worker(job: dict) -> dict:
    sys.path.insert(0, job["tree"])
    import numpy as np
    import torch

    import graft  # noqa: F401  (the malloc tuning, as the CLI)
    from graft.backbones import load_backbone, resolve_backbone
    from graft.backbones import engine as eng
    from graft.cache import FeatureCache
    from graft.data.images import read_image
    from graft.features.extract import cache_namespace, extract_features

    assert Path(graft.__file__).is_relative_to(job["tree"]), graft.__file__
    root, paths, built = Path(job["engines"]), job["paths"], []
    names = [f"{i}:{p}" for i, p in enumerate(paths)]
    if job.get("warmup"):  # export the engine into this tree's cache root
        return {"ok": eng.ort_engine(load_backbone(job["model"]).eval(), root) is not None}

    source = resolve_backbone(job["model"])  # names the network; builds nothing

    def build():
        built.append(source.build())
        return built[-1]

    def extract(get_backbone, pre):
        cache = FeatureCache(root, cache_namespace(pre))  # in `root`: the export is found there
        shutil.rmtree(cache.dir, ignore_errors=True)  # cold: no feature cached
        t = time.perf_counter()
        out = extract_features(get_backbone, names, paths, cache, load=pre.preprocessing.load, batch_size=job["batch"],
                               progress=False, engine="onnxruntime")
        seconds = time.perf_counter() - t
        shutil.rmtree(cache.dir, ignore_errors=True)
        return (*out, seconds)

    # first: as a run's first extraction (the network built, the session made and checked inside)
    _, _, _, cold_s = extract(build, source)
    b = built[0]
    pre, run = b.preprocessing, eng.ort_engine(b, root)
    # then: the same photos again, cold cache, with the network and its session in hand
    feats, ok, st, extract_s = extract(lambda: b, b)
    assert ok.all(), "a bench photo failed to load"
    t = time.perf_counter()
    imgs = [read_image(p) for p in paths]
    decode_s = time.perf_counter() - t
    t = time.perf_counter()
    crops = [pre.crop(im) for im in imgs]
    crop_s = time.perf_counter() - t
    batches = [pre.normalize(torch.stack(crops[i:i + job["batch"]])) for i in range(0, len(crops), job["batch"])]
    run(batches[0])  # warm
    t = time.perf_counter()
    out = [run(x) for x in batches]
    forward_s = time.perf_counter() - t
    diff = float(np.abs(torch.cat(out).numpy() - feats).max())
    n = len(paths)
    return {"photos_s": n / extract_s, "cold_photos_s": n / cold_s, "cold_s": cold_s,
            "wait_s": st.wait_s, "forward_write_s": st.compute_s, "extract_s": extract_s,
            "decode_ms": decode_s / n * 1e3, "resize_crop_ms": crop_s / n * 1e3,
            "ceiling_photos_s": n / forward_s, "rerun_max_diff": diff}


def spawn(job: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": job["tree"]})
    if out.returncode:
        raise SystemExit(f"worker failed ({job['model']}, {job['label']}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the interleaved comparison ------------------------------------------------------------------

def unpack(rev: str, dest: Path) -> str:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "graft"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return str(dest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lite0,lite1,lite2")
    ap.add_argument("--photos", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--before", default="HEAD", help="git revision to compare with, or 'none'")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if not all(s.is_dir() for s in SETS):
        print(json.dumps({"skipped": True, "reason": f"{' or '.join(map(str, SETS))} missing"}))
        return
    paths = photos(args.photos)
    models = [m.strip() for m in args.models.split(",")]
    with tempfile.TemporaryDirectory(prefix="graft-bench-extraction-") as tmp:
        trees = {"after": str(REPO)}
        if args.before != "none":
            trees = {"before": unpack(args.before, Path(tmp) / "before"), **trees}
        results = {(m, k): [] for m in models for k in trees}
        for m in models:
            for label, tree in trees.items():  # export once per tree (the engines' cache)
                job = {"tree": tree, "model": m, "label": label, "paths": paths[:4], "batch": args.batch,
                       "engines": str(Path(tmp) / f"cache-{label}"), "warmup": True}
                spawn(job)
        for r in range(args.rounds):
            for m in models:
                order = list(trees.items()) if (r + models.index(m)) % 2 == 0 else list(trees.items())[::-1]
                for label, tree in order:
                    job = {"tree": tree, "model": m, "label": label, "paths": paths, "batch": args.batch,
                           "engines": str(Path(tmp) / f"cache-{label}")}
                    results[(m, label)].append(spawn(job))
                    print(f"round {r + 1} {m} {label}: {results[(m, label)][-1]['photos_s']:.1f} photos/s", file=sys.stderr,
                          flush=True)
    report(models, trees, results, args)


def report(models, trees, results, args) -> None:
    rows = []
    for m in models:
        row = {"model": m}
        for label in trees:
            runs = results[(m, label)]
            med = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
            row[label] = med
        rows.append(row)
        line = f"{m:6s}"
        for label in trees:
            f = row[label]
            line += (f"  {label}: {f['photos_s']:5.1f} photos/s (cold {f['cold_photos_s']:5.1f}, ceiling "
                     f"{f['ceiling_photos_s']:5.1f}; wait {f['wait_s']:.1f} s, forward+write "
                     f"{f['forward_write_s']:.1f} s, decode {f['decode_ms']:.1f} + resize {f['resize_crop_ms']:.1f} ms/photo)")
        if "before" in trees:
            line += f"  after/before {row['after']['photos_s'] / row['before']['photos_s']:.2f}x"
        print(line)
    print(f"{len(results[(models[0], 'after')])} interleaved rounds of {args.photos} photos, batch {args.batch}, "
          f"{os.cpu_count()} cores; medians")
    print(json.dumps({"photos": args.photos, "rounds": args.rounds, "batch": args.batch, "before": args.before,
                      "results": rows}))


if __name__ == "__main__":
    main()
