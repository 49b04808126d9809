"""How graft's costs grow with the number of photos: 1k and 10k (100k with --n 100000).

Photos: real-looking JPEGs made once from scikit-image's bundled photos (10 classes: one per
source photo; each file a random crop of 30-100% of it, a random long side of 256-500 px, a
random flip, per-channel gain, brightness and gamma, JPEG quality 80-95: every file distinct),
kept in --root (default /tmp/graft-scale, never the repository). Photo i is the same in every
run and every N, so the N=10k set extends the 1k set (hard links into one pool) and one feature
cache serves all N: "cold extraction" at 10k computes the 9k photos the 1k run did not.

Per N, with the digest index and feature cache under --root/cache:
- scan cold (no digest index: every photo read and hashed; the page cache may hold them) and
  warm (index present; the least disturbed of --repeat), in this process, wall and CPU seconds
  (on a shared machine the wall time is mostly waiting for a core), photo files opened
  counted by an audit hook;
- cold extraction photos/s: `graft train --strategy head --aug-views 0` on photos not yet cached
  (misses / extract_s from its metrics);
- warm `graft train --strategy head` (everything cached): wall time (process start, imports and
  the HTML report included), graft's own total, the head fit and its time per epoch (early
  stopping picks the epoch count), peak RSS (wait4's
  ru_maxrss of that child), photo files it opened and which graft module opened them (audit
  hook; the report's gallery reads its handful of thumbnails, nothing else should read any);
- `graft check` (deep; --check-timeout caps it), wall time and peak RSS;
- cache bytes per photo (feature shards; digest index).
Then the growth of each figure from one N to the next, as a ratio and as the exponent k in
cost ~ N^k (1 = linear), and one JSON line.

    .venv/bin/python bench/scale.py                 # N = 1000, 10000
    .venv/bin/python bench/scale.py --n 1000        # quick
    .venv/bin/python bench/scale.py --n 1000,10000,100000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SOURCES = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
           "camera", "coins", "grass"]
GEN_VERSION = 1  # bump when the generator changes: the pool is regenerated

# Runs `python -m graft ...` counting opens of files under a folder (sys.addaudithook sees
# builtins.open, io.open and os.open), by the graft module that opened them, written as JSON to
# $SCALE_OPENS_OUT at exit.
WRAPPER = r"""
import atexit, collections, json, os, runpy, sys
root, out = os.environ["SCALE_PHOTOS"], os.environ["SCALE_OPENS_OUT"]
opened, by = set(), collections.Counter()
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        p = os.fsdecode(args[0])
        if p.startswith(root):
            opened.add(p)
            mods, f = [], sys._getframe(1)
            while f is not None:  # the graft modules on the stack, innermost first
                if "/graft/" in f.f_code.co_filename:
                    mods.append(f.f_code.co_filename.split("/graft/", 1)[1])
                f = f.f_back
            by["report.py" if "report.py" in mods else (mods[0] if mods else "?")] += 1
sys.addaudithook(hook)
atexit.register(lambda: open(out, "w").write(json.dumps({"files": len(opened), "by_module": by})))
sys.argv = ["graft"] + sys.argv[1:]
runpy.run_module("graft", run_name="__main__", alter_sys=True)
"""



# --- photos ---------------------------------------------------------------------------------------

def _sources() -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in SOURCES:
        a = getattr(skimage.data, name)()
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        out.append(np.ascontiguousarray(a[..., :3]))
    return out


_SRC: list | None = None


def _make(args) -> None:
    """Photo i: a random crop, size, flip and colour shift of source i % 10, as a JPEG."""
    global _SRC
    i, path = args
    from PIL import Image

    if _SRC is None:
        _SRC = _sources()
    rng = np.random.default_rng([20240613, GEN_VERSION, i])
    src = _SRC[i % len(_SRC)]
    h, w = src.shape[:2]
    frac = rng.uniform(0.3, 1.0)
    aspect = rng.uniform(0.75, 1.33)
    ch = int(min(h, max(32, round(math.sqrt(frac * h * w / aspect)))))
    cw = int(min(w, max(32, round(ch * aspect))))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = Image.fromarray(src[y0:y0 + ch, x0:x0 + cw])
    long_side = int(rng.integers(256, 501))
    scale = long_side / max(cw, ch)
    img = img.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    a = np.asarray(img, dtype=np.float32) / 255.0
    a = a ** rng.uniform(0.8, 1.25)
    a = a * rng.uniform(0.85, 1.15, size=3) + rng.uniform(-0.08, 0.08)
    img = Image.fromarray(np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8))
    tmp = path.with_name(f".tmp-{path.name}")
    img.save(tmp, format="JPEG", quality=int(rng.integers(80, 96)))
    os.replace(tmp, path)


def pool_path(root: Path, i: int) -> Path:
    return root / "pool" / SOURCES[i % len(SOURCES)] / f"p{i:06d}.jpg"


def ensure_photos(root: Path, n: int, procs: int) -> tuple[Path, float]:
    """root/photos-<n>/<class>/ (hard links into the pool); returns it and seconds spent generating."""
    marker = root / "pool" / "version.json"
    if marker.is_file() and json.loads(marker.read_text()).get("version") != GEN_VERSION:
        shutil.rmtree(root / "pool")
        for d in root.glob("photos-*"):
            shutil.rmtree(d)
    for c in SOURCES:
        (root / "pool" / c).mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"version": GEN_VERSION}))
    todo = [(i, pool_path(root, i)) for i in range(n) if not pool_path(root, i).is_file()]
    t = time.perf_counter()
    if todo:
        print(f"generating {len(todo)} photos into {root / 'pool'} ...", flush=True)
        with ProcessPoolExecutor(procs) as ex:
            list(ex.map(_make, todo, chunksize=64))
        time.sleep(2.1)  # older than the digest index's racy margin before anything indexes them
    gen_s = time.perf_counter() - t
    folder = root / f"photos-{n}"
    for i in range(n):
        link = folder / SOURCES[i % len(SOURCES)] / f"p{i:06d}.jpg"
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(pool_path(root, i), link)
    return folder, gen_s


# --- measuring ------------------------------------------------------------------------------------

def run_child(argv: list[str], photos: Path, timeout: float | None = None) -> dict:
    """Run `python -m graft argv...`: wall seconds, peak RSS (MB), photo opens, stdout, rc."""
    opens_file = photos.parent / f".opens-{os.getpid()}.json"
    opens_file.unlink(missing_ok=True)
    env = dict(os.environ, SCALE_PHOTOS=str(photos), SCALE_OPENS_OUT=str(opens_file), GRAFT_OFFLINE="1",
               HF_HUB_OFFLINE="1")
    t = time.perf_counter()
    out_path = photos.parent / f".stdout-{os.getpid()}.txt"
    with open(out_path, "w") as out, open(photos.parent / f".stderr-{os.getpid()}.txt", "w") as err:
        p = subprocess.Popen([sys.executable, "-c", WRAPPER, *argv], env=env, stdout=out, stderr=err, cwd=REPO)
        deadline = None if timeout is None else time.monotonic() + timeout
        timed_out = False
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.monotonic() > deadline:
                p.kill()
                timed_out = True
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.05)
    wall = time.perf_counter() - t
    opens = json.loads(opens_file.read_text()) if opens_file.is_file() else None
    stdout = out_path.read_text()
    opens_file.unlink(missing_ok=True)
    out_path.unlink()
    rc = None if timed_out else os.waitstatus_to_exitcode(status)
    err_path = photos.parent / f".stderr-{os.getpid()}.txt"
    if rc == 0 or err_path.stat().st_size == 0:
        err_path.unlink()  # kept only when the child failed
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "opens": opens,
            "rc": rc, "timed_out": timed_out,
            "stdout": stdout}


def scan(photos: Path, cache: Path, *, cold: bool) -> dict:
    from graft.data import scan_photos
    from graft.data.digests import index_path

    if cold:
        index_path(photos, cache).unlink(missing_ok=True)
    opened = []
    _HOOK_TARGET[:] = [str(photos), opened]
    t, cpu = time.perf_counter(), time.process_time()
    data = scan_photos(photos, cache_dir=cache)
    secs, cpu = time.perf_counter() - t, time.process_time() - cpu
    _HOOK_TARGET[:] = []
    return {"s": round(secs, 3), "cpu_s": round(cpu, 3), "photo_opens": len(opened),
            "photos": len(data.train) + len(data.val)}


_HOOK_TARGET: list = []


def _audit(event, args):
    if event == "open" and _HOOK_TARGET and isinstance(args[0], (str, bytes, os.PathLike)):
        p = os.fsdecode(args[0])
        if p.startswith(_HOOK_TARGET[0]):
            _HOOK_TARGET[1].append(p)


def _train_json(r: dict) -> dict:
    lines = [line for line in r["stdout"].splitlines() if line.startswith("{")]
    if r["rc"] != 0 or not lines:
        raise SystemExit(f"graft train failed (rc {r['rc']}); its stderr is in the --root folder (.stderr-*.txt)")
    return json.loads(lines[-1])


def dir_bytes(path: Path, pattern: str = "*") -> tuple[int, int]:
    files = [p for p in path.rglob(pattern) if p.is_file() and not p.name.startswith(".")]
    return sum(p.stat().st_size for p in files), len(files)


def measure(n: int, root: Path, args) -> dict:
    photos, gen_s = ensure_photos(root, n, args.procs)
    cache = root / "cache"
    runs = root / "runs"
    fig: dict = {"n": n, "generate_s": round(gen_s, 1)}
    fig["scan_cold"] = scan(photos, cache, cold=True)
    warm_scans = [scan(photos, cache, cold=False) for _ in range(args.repeat)]
    fig["scan_warm"] = min(warm_scans, key=lambda r: r["cpu_s"])  # the least disturbed by other load
    fig["scan_warm"]["median_s"] = sorted(r["s"] for r in warm_scans)[len(warm_scans) // 2]
    print(f"[{n}] scan cold {fig['scan_cold']['s']} s (CPU {fig['scan_cold']['cpu_s']} s, "
          f"{fig['scan_cold']['photo_opens']} photo opens), warm {fig['scan_warm']['s']} s "
          f"(CPU {fig['scan_warm']['cpu_s']} s, {fig['scan_warm']['photo_opens']} opens)", flush=True)

    # --aug-views 0: the pipeline's scaling alone (the default weighs 4 views per training photo up
    # to 1,000 of them, which would confound the 1k row with the 10k one; bench/quality.py has its cost)
    common = ["--strategy", "head", "--aug-views", "0", "--cache-dir", str(cache), "--json", "--quiet"]
    if args.workers is not None:
        common += ["--workers", str(args.workers)]
    shutil.rmtree(runs / f"{n}-first", ignore_errors=True)
    first = run_child(["train", str(photos), "--out", str(runs / f"{n}-first"), *common], photos)
    m = _train_json(first)
    misses = m["cache"]["misses"]
    fig["extract"] = {"misses": misses, "extract_s": m["timings"]["extract_s"],
                      "photos_per_s": round(misses / m["timings"]["extract_s"], 1) if misses else None,
                      "wall_s": first["wall_s"], "peak_rss_mb": first["peak_rss_mb"]}
    print(f"[{n}] first train: {misses} photos extracted in {m['timings']['extract_s']:.1f} s "
          f"({fig['extract']['photos_per_s']} photos/s), wall {first['wall_s']} s", flush=True)

    shutil.rmtree(runs / f"{n}-warm", ignore_errors=True)
    warm = run_child(["train", str(photos), "--out", str(runs / f"{n}-warm"), *common], photos)
    w = _train_json(warm)
    fig["warm_train"] = {"wall_s": warm["wall_s"], "cpu_s": warm["cpu_s"], "total_s": w["timings"]["total_s"],
                         "train_s": w["timings"]["train_s"], "extract_s": w["timings"]["extract_s"],
                         "epochs": w["epochs_run"],
                         "train_s_per_epoch": round(w["timings"]["train_s"] / max(1, w["epochs_run"]), 4),
                         "misses": w["cache"]["misses"], "peak_rss_mb": warm["peak_rss_mb"],
                         "photo_files_opened": warm["opens"]["files"] if warm["opens"] else None,
                         "photo_opens_by_module": warm["opens"]["by_module"] if warm["opens"] else None,
                         "val_accuracy": w["val_accuracy"]}
    print(f"[{n}] warm train: wall {warm['wall_s']} s, CPU {warm['cpu_s']} s (graft's total {w['timings']['total_s']} s, head "
          f"{w['timings']['train_s']} s for {w['epochs_run']} epochs), peak RSS {warm['peak_rss_mb']} MB, photo files opened "
          f"{fig['warm_train']['photo_files_opened']} {fig['warm_train']['photo_opens_by_module']}, "
          f"val acc {w['val_accuracy']:.3f}", flush=True)

    if args.check_timeout > 0:
        chk = run_child(["check", str(photos), "--cache-dir", str(cache), "--json"], photos,
                        timeout=args.check_timeout)
        fig["check"] = {"wall_s": chk["wall_s"], "cpu_s": chk["cpu_s"], "peak_rss_mb": chk["peak_rss_mb"], "timed_out": chk["timed_out"],
                        "rc": chk["rc"]}
        print(f"[{n}] graft check: {'> ' if chk['timed_out'] else ''}{chk['wall_s']} s, peak RSS "
              f"{chk['peak_rss_mb']} MB", flush=True)

    from graft.data.digests import index_path

    ns = Path(m["cache"]["dir"])
    feat_bytes, _ = dir_bytes(ns, "*.safetensors")
    fig["cache_bytes_per_photo"] = {"features": round(feat_bytes / max(1, _cached_entries(ns)), 1),
                                    "digest_index": round(index_path(photos, cache).stat().st_size / n, 1)}
    return fig


def _cached_entries(ns: Path) -> int:
    from graft.cache.features import _read_header

    return sum(len(_read_header(s)[0]) for s in ns.glob("*.safetensors") if not s.name.startswith("."))


def growth(a: dict, b: dict) -> dict:
    """Ratios of each cost from N=a to N=b and the exponent k (cost ~ N^k)."""
    r = b["n"] / a["n"]
    pairs = {
        "scan_cold_s": (a["scan_cold"]["s"], b["scan_cold"]["s"]),
        "scan_warm_s": (a["scan_warm"]["s"], b["scan_warm"]["s"]),
        "scan_warm_cpu_s": (a["scan_warm"]["cpu_s"], b["scan_warm"]["cpu_s"]),
        "warm_train_wall_s": (a["warm_train"]["wall_s"], b["warm_train"]["wall_s"]),
        "warm_train_cpu_s": (a["warm_train"]["cpu_s"], b["warm_train"]["cpu_s"]),
        "warm_train_head_s": (a["warm_train"]["train_s"], b["warm_train"]["train_s"]),
        "warm_train_head_s_per_epoch": (a["warm_train"]["train_s_per_epoch"], b["warm_train"]["train_s_per_epoch"]),
        "warm_train_peak_rss_mb": (a["warm_train"]["peak_rss_mb"], b["warm_train"]["peak_rss_mb"]),
    }
    if "check" in a and "check" in b and not (a["check"]["timed_out"] or b["check"]["timed_out"]):
        pairs["check_s"] = (a["check"]["wall_s"], b["check"]["wall_s"])
        pairs["check_peak_rss_mb"] = (a["check"]["peak_rss_mb"], b["check"]["peak_rss_mb"])
    out = {}
    for k, (x, y) in pairs.items():
        ratio = y / x if x else float("inf")
        out[k] = {"ratio": round(ratio, 2), "exponent": round(math.log(ratio) / math.log(r), 2) if x and y else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="1000,10000", help="photo counts, comma-separated (100000 works, slowly)")
    ap.add_argument("--root", default="/tmp/graft-scale", help="where photos, cache and runs live (not the repo)")
    ap.add_argument("--check-timeout", type=float, default=900, help="cap on each `graft check` (s); 0 skips it")
    ap.add_argument("--procs", type=int, default=max(1, len(os.sched_getaffinity(0))), help="photo generators")
    ap.add_argument("--workers", type=int, default=None, help="graft train --workers")
    ap.add_argument("--repeat", type=int, default=3, help="warm scans per N (the least disturbed one counts)")
    args = ap.parse_args()
    root = Path(args.root).expanduser()
    if REPO in root.resolve().parents or root.resolve() == REPO:
        raise SystemExit("--root must be outside the repository")
    sys.addaudithook(_audit)
    ns = sorted(int(x) for x in args.n.split(","))
    figs = [measure(n, root, args) for n in ns]

    print("\n     N  scan cold  scan warm  extract  warm train  head fit  warm RSS   check   check RSS  "
          "features/photo  index/photo")
    for f in figs:
        c = f.get("check", {})
        chk = ("> " if c.get("timed_out") else "") + (f"{c['wall_s']:.1f} s" if c else "-")
        eps = f["extract"]["photos_per_s"]
        print(f"{f['n']:6d}  {f['scan_cold']['s']:7.2f} s  {f['scan_warm']['s']:7.2f} s  "
              f"{(f'{eps:.1f}/s' if eps else 'cached'):>7s}  {f['warm_train']['wall_s']:8.1f} s  "
              f"{f['warm_train']['train_s']:6.2f} s  {f['warm_train']['peak_rss_mb']:6.0f} MB  {chk:>8s}  "
              f"{(str(round(c['peak_rss_mb'])) + ' MB') if c else '-':>9s}  "
              f"{f['cache_bytes_per_photo']['features']:10.0f} B  {f['cache_bytes_per_photo']['digest_index']:8.0f} B")
    grow = {}
    for a, b in zip(figs, figs[1:]):
        g = grow[f"{a['n']}->{b['n']}"] = growth(a, b)
        print(f"growth {a['n']} -> {b['n']} (x{b['n'] / a['n']:g} photos): " + ", ".join(
            f"{k} x{v['ratio']} (N^{v['exponent']})" for k, v in g.items()))
    big = max(figs, key=lambda f: f["n"])
    targets = {
        # the report's gallery shows a fixed handful of validation photos; nothing else may read one
        "warm_run_reads_no_photo": all(
            f["scan_warm"]["photo_opens"] == 0 and f["warm_train"]["photo_opens_by_module"] is not None
            and not any(n for mod, n in f["warm_train"]["photo_opens_by_module"].items() if mod != "report.py")
            for f in figs),
        "warm_report_thumbnails": [f["warm_train"]["photo_files_opened"] for f in figs],
        "warm_scan_10k_le_2s": next((f["scan_warm"]["s"] <= 2.0 for f in figs if f["n"] == 10000), None),
        "warm_head_rss_10k_le_2gb": next((f["warm_train"]["peak_rss_mb"] <= 2048 for f in figs if f["n"] == 10000),
                                         None),
        # per unit of work: the head's epoch count is early stopping's choice, not a cost of N;
        # wall times on a shared machine wait for cores, so the scans are judged on CPU time
        "nothing_superlinear": all((g[k]["exponent"] or 0) <= 1.15 for g in grow.values() for k in (
            "scan_cold_s", "scan_warm_cpu_s", "warm_train_head_s_per_epoch", "warm_train_peak_rss_mb",
            "check_s") if k in g),
    }
    print("targets: " + ", ".join(f"{k}={v}" for k, v in targets.items()) + f" (largest N {big['n']})")
    print(json.dumps({"n": ns, "figures": figs, "growth": grow, "targets": targets}))


if __name__ == "__main__":
    main()
