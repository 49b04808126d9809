"""What the interpreter's teardown costs after a graft command (graft._util.exit.leave): the same
command in the same tree, ended by `sys.exit(main())` (what the `graft` script did before) and by
`python -m graft` (graft.cli.run: atexit handlers, threads and flushes, then os._exit), the two
alternating within each round; wall-clock medians per command, and their ratio.

Commands: `graft predict RUN val/ants` (70 photos, the run's ONNX export), a warm `graft train`
rerun over the cache the first run filled, and a cold `graft train` (fresh cache each time;
--cold 0 leaves it out). The run is a head run trained on hymenoptera here first.

    .venv/bin/python bench/exit_teardown.py [--rounds 5] [--cold 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, need_hymenoptera  # noqa: E402

OLD = "import sys; from graft.cli import main; sys.argv = ['graft'] + sys.argv[1:]; sys.exit(main())"


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{cmd} failed:\n{proc.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cold", type=int, default=2, help="cold train rounds (each a fresh cache)")
    args = ap.parse_args()
    data = need_hymenoptera()
    py = sys.executable
    sides = {"sys.exit": [py, "-c", OLD], "leave": [py, "-m", "graft"]}
    with tempfile.TemporaryDirectory(prefix="graft-exit-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "GRAFT_CACHE_DIR": str(tmp / "cache")}
        run = tmp / "run"
        subprocess.run([py, "-m", "graft", "train", str(data), "--out", str(run), "--quiet"], env=env, check=True)
        commands = {"predict": ["predict", str(run), str(data / "val" / "ants")],
                    "warm train": ["train", str(data), "--out", str(tmp / "rerun"), "--quiet"]}
        times = {(c, s): [] for c in commands for s in sides}
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for c, argv in commands.items():
                for s in order:
                    times[c, s].append(timed(sides[s] + argv, env))
        for r in range(args.cold):
            for s in (list(sides) if r % 2 == 0 else list(reversed(sides))):
                cold_env = {**env, "GRAFT_CACHE_DIR": str(tmp / f"cold-{r}-{s}")}
                out = tmp / f"cold-run-{r}-{s}"
                times.setdefault(("cold train", s), []).append(
                    timed(sides[s] + ["train", str(data), "--out", str(out), "--quiet"], cold_env))
                shutil.rmtree(cold_env["GRAFT_CACHE_DIR"])
    figures: dict = {"bench": "exit_teardown", "rounds": args.rounds, "load": round(os.getloadavg()[0], 2)}
    for c in dict.fromkeys(c for c, _ in times):
        med = {s: round(statistics.median(times[c, s]), 3) for s in sides}
        figures[c] = {**med, "saved_s": round(med["sys.exit"] - med["leave"], 3),
                      "ratio": round(med["sys.exit"] / med["leave"], 2)}
        print(c, figures[c], file=sys.stderr)
    emit(figures)


if __name__ == "__main__":
    main()
