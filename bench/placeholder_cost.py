"""What skipping placeholders on train's way costs: the default backbone's `load` (decode, resize,
centre crop) per hymenoptera photo, alone and wrapped in graft.data.placeholders.RefuseNonPhotos,
interleaved photo by photo in one process so both sides see the same machine load, and the
wrapper's own work (the rule on the pixels `load` returned) timed apart, since on a shared
machine it is smaller than the noise of a decode. Also says which photos the wrapper refuses
(hymenoptera has one placeholder, train/ants/imageNotFound.gif).

    .venv/bin/python bench/placeholder_cost.py
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, need_hymenoptera  # noqa: E402

from graft.backbones import DEFAULT_PREPROCESSING  # noqa: E402
from graft.data import scan_photos  # noqa: E402
from graft.data.placeholders import RefuseNonPhotos, non_photo_reason, photo_stats  # noqa: E402
from graft.errors import ImageError  # noqa: E402

ROUNDS = 3


def main():
    root = need_hymenoptera()
    data = scan_photos(root)
    paths = [s.path for s in data.train + data.val]
    plain, wrapped = DEFAULT_PREPROCESSING.load, RefuseNonPhotos(DEFAULT_PREPROCESSING.load)
    for p in paths[:20]:  # warm the page cache and Pillow
        plain(p)
    t_plain = t_wrapped = t_rule = 0.0
    refused = set()
    for _ in range(ROUNDS):
        for p in paths:
            t0 = time.perf_counter()
            x = plain(p)
            t1 = time.perf_counter()
            try:
                wrapped(p)
            except ImageError as e:
                refused.add((str(Path(p).relative_to(root)), e.code))
            t2 = time.perf_counter()
            non_photo_reason(photo_stats(x.permute(1, 2, 0).numpy(), lazy=True))  # the wrapper's own work
            t3 = time.perf_counter()
            t_plain += t1 - t0
            t_wrapped += t2 - t1
            t_rule += t3 - t2
    n = ROUNDS * len(paths)
    ms_plain, ms_wrapped, ms_rule = 1e3 * t_plain / n, 1e3 * t_wrapped / n, 1e3 * t_rule / n
    print(f"{len(paths)} photos x {ROUNDS} rounds, interleaved")
    print(f"{'':<30}{'ms/photo':>10}")
    print(f"{'load':<30}{ms_plain:>10.2f}")
    print(f"{'RefuseNonPhotos(load)':<30}{ms_wrapped:>10.2f}")
    print(f"{'the rule alone, on its pixels':<30}{ms_rule:>10.2f}  ({ms_rule / ms_plain:.0%} of a load)")
    print("refused:", sorted(refused))
    emit({"photos": len(paths), "rounds": ROUNDS, "load_ms": round(ms_plain, 3), "refuse_load_ms": round(ms_wrapped, 3),
          "rule_ms": round(ms_rule, 3), "refused": sorted(p for p, _ in refused)})


if __name__ == "__main__":
    main()
