"""How fast does graft start? `graft --help`, a one-photo `graft predict` from cold, and a loaded
Predictor per photo: the previous code path against today's, interleaved, in one run.

  --help        old: everything `import graft` used to import up front (the training recipe,
                predict/evaluate: torch, torchvision) and every sub-command's full parser built;
                new: `graft --help` (nothing heavy imported, sub-commands listed by their HELP).
  predict cold  old: that eager import, then the run's network rebuilt in torch through timm's
                model factory (`--engine torch`: what `graft predict` did every call);
                new: `graft predict RUN PHOTO`, which runs the run's fresh ONNX export on
                onnxruntime, without torch or timm. Also shown: new with `--engine torch`, what a
                run that was never exported costs now.
  warm          one Predictor, loaded once, per photo (decode + crop + forward + answer), ONNX
                and torch engines alternating photo by photo.

Each cold figure is a fresh interpreter (`python -c` / the graft entry point), wall-clock, the
sides alternating within each round so load on a shared machine hits both alike; medians are
reported. The run is `--run RUN` (exported to ONNX in a temporary copy when it has no fresh
export) or a head run trained on hymenoptera here.

    .venv/bin/python bench/startup.py [--run RUN] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, need_hymenoptera  # noqa: E402

TARGETS = {"help_s": 0.3, "predict_cold_s": 2.5, "warm_ms": 50.0}

OLD_EAGER = "import graft.recipe, graft.use.inference, graft.cache.admin, graft.augment.functional; "
OLD_HELP = OLD_EAGER + "from graft.cli import build_parser; build_parser().parse_args(['--help'])"
OLD_PREDICT = OLD_EAGER + "import sys; from graft.cli import main; sys.exit(main(sys.argv[1:] + ['--engine', 'torch']))"


def timed(argv: list[str], env: dict) -> tuple[float, float]:
    """-> (wall seconds, CPU seconds of the child: user + system, which other programs' load
    inflates far less than the wall clock)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return dt, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def prepared_run(args, tmp: Path, data: Path) -> Path:
    """A run with a fresh ONNX export: --run as it is when it has one, else a copy exported here."""
    import graft
    from graft.use.export import export_run
    from graft.use.predictor import Predictor

    if args.run:
        run = Path(args.run)
    else:
        run = tmp / "run"
        print("training a head run on hymenoptera ...", file=sys.stderr)
        graft.train(data, run, strategy="head", workers=args.workers, progress=False, report=False)
    if Predictor(run).engine.name == "onnx":
        return run
    copy = tmp / "exported"
    shutil.copytree(run, copy)
    print("exporting it to ONNX (once) ...", file=sys.stderr)
    export_run(copy, "onnx")
    return copy


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a run folder (default: train a head run on hymenoptera)")
    ap.add_argument("--rounds", type=int, default=5, help="cold starts per side (default 5)")
    ap.add_argument("--warm", type=int, default=20, help="photos per engine in the warm measurement")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    data = need_hymenoptera()
    photos = sorted(p for p in (data / "val").rglob("*.jpg"))
    photo = str(photos[0])
    graft_exe = str(Path(sys.executable).with_name("graft"))
    py = sys.executable
    load = round(os.getloadavg()[0], 2)
    # The cold starts run with the environment as given; this process's torch (the warm torch
    # engine) with OpenMP's idle threads sleeping, as `graft serve` does: on a busy machine
    # spinning ones made a one-photo forward pass take seconds (bench/serve_load.py).
    env = dict(os.environ)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    with tempfile.TemporaryDirectory(prefix="graft-startup-") as tmp:
        run = str(prepared_run(args, Path(tmp), data))
        sides = {
            "help old": [py, "-c", OLD_HELP],
            "help new": [graft_exe, "--help"],
            "predict old": [py, "-c", OLD_PREDICT, "predict", run, photo],
            "predict new": [graft_exe, "predict", run, photo],
            "predict new, torch engine": [graft_exe, "predict", run, photo, "--engine", "torch"],
        }
        times: dict[str, list[float]] = {k: [] for k in sides}
        cpu: dict[str, list[float]] = {k: [] for k in sides}
        for r in range(args.rounds):
            names = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for name in names:
                wall, used = timed(sides[name], env)
                times[name].append(wall)
                cpu[name].append(used)
            print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
                  file=sys.stderr)

        from graft.use.predictor import Predictor

        engines = {"onnx": Predictor(run), "torch": Predictor(run, engine="torch")}
        warm: dict[str, list[float]] = {k: [] for k in engines}
        warm_cpu: dict[str, list[float]] = {k: [] for k in engines}  # this process's CPU: all its threads
        for p in engines.values():  # first passes: allocator, thread pools
            p.predict(photos[1])
        for i, path in enumerate(photos[2:2 + args.warm]):
            for name in (list(engines) if i % 2 == 0 else list(engines)[::-1]):
                t0, c0 = time.perf_counter(), time.process_time()
                engines[name].predict(path)
                warm[name].append(time.perf_counter() - t0)
                warm_cpu[name].append(time.process_time() - c0)

    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    warm_ms = {k: 1000 * statistics.median(v) for k, v in warm.items()}
    warm_cpu_ms = {k: 1000 * statistics.median(v) for k, v in warm_cpu.items()}
    rows = [("graft --help", med["help old"], med["help new"], TARGETS["help_s"]),
            ("predict 1 photo, cold", med["predict old"], med["predict new"], TARGETS["predict_cold_s"])]
    print(f"\nmedian of {args.rounds} cold starts; load average {load} on {len(os.sched_getaffinity(0))} cores")
    print(f"{'wall clock':28}{'old':>9}{'new':>9}{'speed-up':>10}{'target':>9}   CPU s old -> new")
    for (name, old, new, target), key in zip(rows, ("help", "predict")):
        print(f"{name:28}{old:8.2f}s{new:8.2f}s{old / new:9.1f}x{target:8.2f}s  {'ok' if new <= target else 'MISSED'}"
              f"  {med_cpu[key + ' old']:6.2f} -> {med_cpu[key + ' new']:.2f}")
    print(f"{'predict cold, torch engine':28}{'':9}{med['predict new, torch engine']:8.2f}s"
          f"{'':21}{med_cpu['predict new, torch engine']:6.2f}   (a run never exported)")
    print(f"{'Predictor warm, per photo':28}{warm_ms['torch']:7.1f}ms{warm_ms['onnx']:7.1f}ms"
          f"{warm_ms['torch'] / warm_ms['onnx']:9.1f}x{TARGETS['warm_ms']:7.0f}ms  "
          f"{'ok' if warm_ms['onnx'] <= TARGETS['warm_ms'] else 'MISSED'}  {warm_cpu_ms['torch']:6.1f} -> "
          f"{warm_cpu_ms['onnx']:.1f} ms   (torch engine, onnx engine; decode + crop + forward + answer)")
    emit({
        "help_s": {"old": round(med["help old"], 3), "new": round(med["help new"], 3)},
        "predict_cold_s": {"old": round(med["predict old"], 3), "new": round(med["predict new"], 3),
                           "new_torch_engine": round(med["predict new, torch engine"], 3)},
        "cpu_s": {k: round(v, 3) for k, v in med_cpu.items()},
        "warm_ms_per_photo": {"torch": round(warm_ms["torch"], 1), "onnx": round(warm_ms["onnx"], 1)},
        "warm_cpu_ms_per_photo": {k: round(v, 1) for k, v in warm_cpu_ms.items()},
        "targets": TARGETS,
        "met": {"help": med["help new"] <= TARGETS["help_s"], "predict_cold": med["predict new"] <= TARGETS["predict_cold_s"],
                "warm": warm_ms["onnx"] <= TARGETS["warm_ms"]},
        "rounds": args.rounds, "load_avg_before": load, "cores": len(os.sched_getaffinity(0)),
    })


if __name__ == "__main__":
    main()
