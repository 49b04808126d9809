"""Shared bits of the benchmarks: where the real photos are, and the one-line JSON ending."""

import json
import os
import sys
from pathlib import Path

HYMENOPTERA = Path(os.environ.get("GRAFT_BENCH_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera_data"))


def need_hymenoptera() -> Path:
    if not (HYMENOPTERA / "train").is_dir():
        print(f"skipped: {HYMENOPTERA} is not there (set GRAFT_BENCH_DATA to a copy of hymenoptera_data)")
        print(json.dumps({"skipped": True, "reason": f"{HYMENOPTERA} missing"}))
        sys.exit(0)
    return HYMENOPTERA


def emit(figures: dict) -> None:
    print(json.dumps(figures))
