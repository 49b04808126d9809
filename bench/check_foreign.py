"""Does `graft check` find photos of neither class saved in a class folder, and how many real photos
does it flag? (issue 20, item 6)

A copy of a real training set (ants/bees, then trashnet if present) gets 5 foreign photos from
scikit-image's bundled data (a coffee cup, a rocket, an astronaut, a cat, a cameraman) saved as
JPEGs into its class folders; `graft check` runs on the copy. Figures per set:

- after: how many of the 5 are among check's first 10 findings, and how many real photos it
  flags as foreign (the `foreign` finding: "looks like neither class").
- before: the same for check without the foreign finding (its findings less the `foreign` ones,
  which is exactly what check reported before it had one: the other checks did not change), and
  `mislabel_*`: the likely-mislabelled finding alone, the one that could have caught them.

Nothing is written into ../shared; the copy and the feature cache live in a temporary folder
(`--cache DIR` keeps the features between runs). Never run on a val/ or test/ folder: the
thresholds are fixed in graft.check.foreign by a rule on each set's own training photos.

    .venv/bin/python bench/check_foreign.py [--sets hymenoptera,trashnet] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HYMENOPTERA, emit  # noqa: E402

TRASHNET = HYMENOPTERA.parent / "trashnet"
TOP = 10


def plant(root: Path) -> list[Path]:
    """Five foreign photos from scikit-image's bundled data, JPEGs spread over the class folders."""
    import numpy as np
    import skimage.data
    from PIL import Image

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    out = []
    for i, name in enumerate(("coffee", "rocket", "astronaut", "chelsea", "camera")):
        pixels = np.asarray(getattr(skimage.data, name)())
        img = Image.fromarray(pixels).convert("RGB")
        path = root / classes[i % len(classes)] / f"img_{1000 + i}.jpg"  # a name that gives nothing away
        img.save(path, format="JPEG", quality=90)
        out.append(path)
    return out


def figures(findings: list[dict], planted: list[Path], codes=None) -> dict:
    """Planted photos among the first TOP findings, and real photos flagged (by `codes`, all if None)."""
    planted_set = {str(p) for p in planted}
    kept = [f for f in findings if codes is None or f["code"] in codes]
    top = {f["path"] for f in kept[:TOP]}
    flagged = {f["path"] for f in kept}
    return {"planted_in_top10": len(top & planted_set), "planted_flagged": len(flagged & planted_set),
            "real_flagged": len(flagged - planted_set)}


def run_set(name: str, train: Path, work: Path, cache: Path) -> dict:
    from graft.check import check_photos

    root = work / name
    shutil.copytree(train, root)
    planted = plant(root)
    t0 = time.perf_counter()
    report = check_photos(root, cache_dir=cache, workers=0)
    seconds = time.perf_counter() - t0
    findings = report["findings"]
    before = [f for f in findings if f["code"] != "foreign"]
    foreign = [f for f in findings if f["code"] == "foreign"]
    for f in foreign:
        print(f"{name}: {f['message']}", file=sys.stderr)
    return {"photos": sum(n["train"] + n["val"] for n in report["counts"].values()),
            "classes": len(report["classes"]), "findings": len(findings),
            "before": figures(before, planted), "mislabel_only": figures(findings, planted, {"likely_mislabelled"}),
            "after": figures(findings, planted), "after_foreign": figures(findings, planted, {"foreign"}),
            "top10_codes": [f["code"] for f in findings[:TOP]], "check_s": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="hymenoptera,trashnet")
    ap.add_argument("--cache", default=None, help="feature cache folder (default: a temporary one)")
    args = ap.parse_args()
    sets = {"hymenoptera": HYMENOPTERA / "train", "trashnet": TRASHNET / "train"}
    wanted = [s for s in args.sets.split(",") if s]
    if not (sets[wanted[0]]).is_dir():
        print(json.dumps({"skipped": True, "reason": f"{sets[wanted[0]]} missing"}))
        return
    out = {"planted": 5, "top": TOP}
    with tempfile.TemporaryDirectory(prefix="graft-check-foreign-") as tmp:
        work = Path(tmp)
        cache = Path(args.cache) if args.cache else work / "cache"
        for name in wanted:
            if sets[name].is_dir():
                out[name] = run_set(name, sets[name], work, cache)
            else:
                out[name] = {"skipped": f"{sets[name]} missing"}
    emit(out)


if __name__ == "__main__":
    main()
