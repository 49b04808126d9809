"""Fuzz graft end to end: thousands of mutated images through the image reader, `graft train` and
`graft predict`, each in a child process with a timeout; no hang, no traceback, bounded memory.

The inputs are the small valid JPEG/PNG/GIF/WebP/BMP seeds of tests/data/test_fuzz_images.py under
its mutators (bit flips, truncation, inserted and overwritten bytes, header fields set to odd
values), drawn here by a seeded RNG rather than by hypothesis, so they are other inputs than
CI's 2,250. Each child's peak RSS (os.wait4, the same figure as getrusage(RUSAGE_CHILDREN)
.ru_maxrss, which is also printed) is compared with the same command on as many clean photos:
a mutated file may cost at most the decode budget of one image (GRAFT_DECODE_BUDGET_MB, 192 MB)
per process more, hence the bound of clean + 256 MB per child.

    GRAFT_FUZZ=1 .venv/bin/python bench/fuzz_images.py [--n 5000] [--train 500] [--batch 500]

Minutes of CPU, so it runs only with GRAFT_FUZZ=1 (never in the test command); it ends with
one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))
from _common import emit  # noqa: E402

BOUND_MB = 256  # over the same command on clean photos, per child
FORMATS = ["JPEG", "PNG", "GIF", "BMP", "WEBP"]


def random_mutation(rng: np.random.Generator, interesting: list[int]):
    """One mutation, as test_fuzz_images' hypothesis strategy `_mutation` draws them."""
    kind = rng.choice(["flip", "truncate", "insert", "overwrite", "header", "field"])
    pos = int(rng.integers(0, 1 << 20))
    if kind == "flip":
        return ("flip", pos, int(rng.integers(0, 8)))
    if kind == "truncate":
        return ("truncate", pos)
    if kind == "insert":
        return ("insert", pos, rng.bytes(int(rng.integers(1, 25))))
    if kind == "overwrite":
        return ("overwrite", pos, rng.bytes(int(rng.integers(1, 9))))
    value = int(rng.choice(interesting))
    if kind == "header":
        return ("header", int(rng.integers(0, 64)), value, int(rng.choice([1, 2, 4])), bool(rng.integers(0, 2)))
    return ("field", int(rng.integers(0, 1 << 10)), value, bool(rng.integers(0, 2)))


def make_inputs(n: int, seed: int, folders: list[Path], per_folder: int) -> dict[str, int]:
    """n mutated files, `per_folder` to a folder in turn; returns how many of each format."""
    from test_fuzz_images import EXT, HAS_WEBP, INTERESTING, _seeds, mutate

    formats = [f for f in FORMATS if f != "WEBP" or HAS_WEBP]
    seeds = {f: _seeds(f) for f in formats}
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys(formats, 0)
    for i in range(n):
        fmt = formats[i % len(formats)]
        base = seeds[fmt][int(rng.integers(len(seeds[fmt])))]
        mutations = [random_mutation(rng, INTERESTING) for _ in range(int(rng.integers(1, 5)))]
        folder = folders[i // per_folder]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"m{i:05d}{EXT[fmt]}").write_bytes(mutate(base, fmt, mutations))
        counts[fmt] += 1
    return counts


def run_child(argv, timeout: float, env=None) -> dict:
    """Run a command; its exit status, output, wall time and peak RSS (MB), or a hang."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         env={**os.environ, **(env or {})})
    out: dict[str, str] = {}
    readers = [threading.Thread(target=lambda k, f: out.__setitem__(k, f.read()), args=(k, f))
               for k, f in (("stdout", p.stdout), ("stderr", p.stderr))]
    for r in readers:
        r.start()
    hung = False
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - t0 > timeout:
            hung = True
            p.kill()
            pid, status, usage = os.wait4(p.pid, 0)
            break
        time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    return {"rc": p.returncode, "hung": hung, "stdout": out.get("stdout", ""), "stderr": out.get("stderr", ""),
            "wall_s": round(time.perf_counter() - t0, 1), "maxrss_mb": round(usage.ru_maxrss / 1024, 1)}


READER_CHILD = """
import json, signal, sys, time, traceback
from collections import Counter
from pathlib import Path
from graft.data.images import probe_image, read_image
from graft.errors import ImageError

class Hang(BaseException):
    pass

def alarm(signum, frame):
    raise Hang()

signal.signal(signal.SIGALRM, alarm)
counts, problems, slowest = Counter(), [], 0.0
for folder in sys.argv[1:]:
    for path in sorted(Path(folder).iterdir()):
        for call in (lambda: probe_image(path), lambda: read_image(path), lambda: read_image(path, min_short_side=64)):
            t = time.perf_counter()
            signal.alarm(10)
            try:
                call()
                counts["ok"] += 1
            except ImageError as e:
                counts[e.reason.split(" (")[0][:48]] += 1
            except Hang:
                problems.append({"path": str(path), "problem": "no answer in 10 s"})
            except BaseException:
                problems.append({"path": str(path), "problem": traceback.format_exc()[-600:]})
            finally:
                signal.alarm(0)
            slowest = max(slowest, time.perf_counter() - t)
print("RESULTS " + json.dumps({"counts": counts, "problems": problems, "slowest_s": round(slowest, 3)}))
"""


def reader_pass(folders, timeout) -> dict:
    r = run_child([sys.executable, "-c", READER_CHILD, *map(str, folders)], timeout)
    line = next((x for x in r["stdout"].splitlines() if x.startswith("RESULTS ")), None)
    r["results"] = json.loads(line.removeprefix("RESULTS ")) if line else None
    return r


def check_cli(r: dict, what: str, expect_lines: int | None = None) -> list[str]:
    """What is wrong with one CLI child's outcome (nothing, ideally)."""
    bad = []
    if r["hung"]:
        bad.append(f"{what}: no answer in the time limit")
    if "Traceback" in r["stderr"]:
        bad.append(f"{what}: traceback: {r['stderr'][-800:]}")
    if r["rc"] not in (0, 1) or (r["rc"] == 1 and "error:" in r["stderr"]):
        bad.append(f"{what}: exit {r['rc']}: {r['stderr'][-400:]}")
    if expect_lines is not None and len(r["stdout"].splitlines()) != expect_lines:
        bad.append(f"{what}: {len(r['stdout'].splitlines())} lines for {expect_lines} files")
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000, help="mutated files through predict (default 5000)")
    ap.add_argument("--train", type=int, default=500, help="more mutated files among the training photos")
    ap.add_argument("--batch", type=int, default=500, help="files per predict call")
    ap.add_argument("--seed", type=int, default=20250101)
    ap.add_argument("--workers", default="2")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per child before it counts as hung")
    args = ap.parse_args()
    if not os.environ.get("GRAFT_FUZZ"):
        print("skipped: set GRAFT_FUZZ=1 to run (minutes of CPU)")
        emit({"skipped": True, "reason": "GRAFT_FUZZ not set"})
        return
    from conftest import make_photo_folder

    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="graft-fuzz-") as tmp:
        tmp = Path(tmp)
        env = {"GRAFT_CACHE_DIR": str(tmp / "cache"), "GRAFT_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
        # the clean baselines do the same work: as many photos to train on, a predict batch as big
        clean = make_photo_folder(tmp / "clean", per_class=10 + (args.train + 1) // 2, seed=1)
        clean_batch = make_photo_folder(tmp / "clean-batch", per_class=(args.batch + 1) // 2, seed=3)
        photos = make_photo_folder(tmp / "photos", per_class=10, seed=2)
        half = (args.train + 1) // 2
        train_counts = make_inputs(args.train, args.seed + 1, [photos / "blue", photos / "red"], half)
        batches = [tmp / "predict" / f"b{k:02d}" for k in range(-(-args.n // args.batch))]
        counts = make_inputs(args.n, args.seed, batches, args.batch)
        graft = [sys.executable, "-m", "graft"]

        # clean baselines, then the same commands on mutated files
        base_read = reader_pass([clean / "blue", clean / "red"], args.timeout)
        fuzz_read = reader_pass([photos / "blue", photos / "red", *batches], args.timeout)
        base_train = run_child([*graft, "train", str(clean), "--out", str(tmp / "run-clean"), "--strategy", "head",
                                "--workers", args.workers, "--quiet"], args.timeout, env)
        fuzz_train = run_child([*graft, "train", str(photos), "--out", str(tmp / "run"), "--strategy", "head",
                                "--workers", args.workers, "--quiet"], args.timeout, env)
        problems += check_cli(base_train, "train on clean photos") + check_cli(fuzz_train, "train")
        run = tmp / "run" if fuzz_train["rc"] == 0 else tmp / "run-clean"
        base_predict = run_child([*graft, "predict", str(run), str(clean_batch), "--workers", args.workers],
                                 args.timeout, env)
        problems += check_cli(base_predict, "predict on clean photos", 2 * ((args.batch + 1) // 2))
        predicts = []
        for b in batches:
            r = run_child([*graft, "predict", str(run), str(b), "--workers", args.workers], args.timeout, env)
            n_files = len(list(b.iterdir()))
            problems += check_cli(r, f"predict {b.name}", n_files)
            lines = r["stdout"].splitlines()
            r["refused"] = sum(": error: " in x for x in lines)
            r["scored"] = len(lines) - r["refused"]
            predicts.append(r)
            print(f"  predict {b.name}: {n_files} files, {r['scored']} scored, {r['refused']} refused, "
                  f"{r['wall_s']} s, peak RSS {r['maxrss_mb']} MB", flush=True)
        for name, r in (("reader on clean photos", base_read), ("reader", fuzz_read)):
            if r["hung"] or r["results"] is None:
                problems.append(f"{name}: no result ({r['stderr'][-400:]})")
            else:
                problems += [f"{name}: {p['path']}: {p['problem']}" for p in r["results"]["problems"]]
        metrics = {}
        if (tmp / "run" / "metrics.json").is_file():
            metrics = json.loads((tmp / "run" / "metrics.json").read_text())
        children_maxrss_mb = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)

    peak = {
        "reader": (base_read["maxrss_mb"], fuzz_read["maxrss_mb"]),
        "train": (base_train["maxrss_mb"], fuzz_train["maxrss_mb"]),
        "predict": (base_predict["maxrss_mb"], max(r["maxrss_mb"] for r in predicts)),
    }
    for name, (clean_mb, fuzz_mb) in peak.items():
        if fuzz_mb > clean_mb + BOUND_MB:
            problems.append(f"{name}: peak RSS {fuzz_mb} MB, over clean {clean_mb} MB + {BOUND_MB} MB")
    n_files = args.n + args.train
    reads = fuzz_read["results"]["counts"] if fuzz_read["results"] else {}
    print(f"\n{'child':<10} {'clean peak RSS MB':>18} {'fuzzed peak RSS MB':>19} {'bound MB':>9}")
    for name, (clean_mb, fuzz_mb) in peak.items():
        print(f"{name:<10} {clean_mb:>18} {fuzz_mb:>19} {clean_mb + BOUND_MB:>9}")
    print(f"\nmutated files: {n_files} ({args.n} through predict in {len(batches)} calls, {args.train} among "
          f"the training photos; all of them and the 20 clean training photos through the reader, "
          f"3 calls each)")
    print(f"formats: predict {counts}, train {train_counts}")
    print(f"train: skipped {len(metrics.get('skipped', []))}, trained on {metrics.get('n_train')} + "
          f"{metrics.get('n_val')} val; predict: {sum(r['scored'] for r in predicts)} scored, "
          f"{sum(r['refused'] for r in predicts)} refused")
    print(f"reader outcomes: {dict(sorted(reads.items(), key=lambda kv: -kv[1]))}")
    print(f"slowest reader call: {fuzz_read['results']['slowest_s'] if fuzz_read['results'] else None} s; "
          f"wall: reader {fuzz_read['wall_s']} s, train {fuzz_train['wall_s']} s, "
          f"predict {round(sum(r['wall_s'] for r in predicts), 1)} s")
    print(f"getrusage(RUSAGE_CHILDREN).ru_maxrss: {children_maxrss_mb} MB")
    print("problems: " + ("none" if not problems else "\n  " + "\n  ".join(problems)))
    emit({"mutated_files": n_files, "through_predict": args.n, "predict_calls": len(batches),
          "through_train": args.train, "reader_calls": sum(reads.values()),
          "predict_scored": sum(r["scored"] for r in predicts), "predict_refused": sum(r["refused"] for r in predicts),
          "train_skipped": len(metrics.get("skipped", [])), "hangs": sum(r["hung"] for r in [fuzz_train, *predicts]),
          "tracebacks": sum("Traceback" in r["stderr"] for r in [fuzz_train, *predicts]),
          "peak_rss_mb": {k: {"clean": a, "fuzzed": b} for k, (a, b) in peak.items()},
          "bound_mb_over_clean": BOUND_MB, "rusage_children_maxrss_mb": children_maxrss_mb,
          "problems": len(problems)})
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
