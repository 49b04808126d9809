"""Images/s of graft's training pipeline vs the standard torchvision recipe, same worker count.

graft:       header-first crop draw -> JPEG decode at the largest DCT reduction that keeps the
             crop >= 224 px -> crop -> resize (uint8 tensor) -> flip -> colour jitter and RGB
             shift in one fused kernel -> collate uint8 -> normalise in the consumer.
torchvision: ImageFolder + PIL decode + RandomResizedCrop + RandomHorizontalFlip + ColorJitter +
             ToTensor + Normalize (float32 out of the workers), the PyTorch tutorial's recipe.
graft is measured twice: decoding every photo every epoch, and with its decoded-photo cache
(graft.data.decoded: each photo decoded once, later epochs crop from the stored pixels), which is
what `graft train` does when the decoded set fits its budget. Both crop with scale (0.08, 1) and
jitter brightness/contrast/saturation by 0.4. Each configuration runs one warm-up epoch, then
times three (persistent workers), three times (twice for the big photos), interleaved, best kept,
on the hymenoptera photos and on 12-megapixel JPEGs this script makes by upscaling them (quality
90). Then a per-op cost table (microseconds per image, one process, one thread), ending with the
heavy preset's geometry (crop and resize, flip, rotation, shear, local warp) per photo, from the
decoded crop region to 224 px as graft's loader has it: each op's own apply one after another
against the loader's single resample (Pipeline.apply_fused), interleaved photo by photo, as the
preset draws them and with every op drawn; mean and best of five per photo (the machine is shared).

    .venv/bin/python bench/pipeline_throughput.py [--big N] [--workers 0,1,2] [--ops-only]
"""

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

# The consumer's threads share the two cores with the workers; an OpenMP pool sized at start-up
# keeps spinning after torch.set_num_threads(1), so size it here, before torch loads (both sides
# run in this process; torchvision's consumer does no tensor work of its own).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, need_hymenoptera  # noqa: E402

import graft  # noqa: E402,F401  (applies graft's allocator tuning, as in real use)
from graft.augment import build  # noqa: E402
from graft.backbones import DEFAULT_PREPROCESSING as PRE  # noqa: E402
from graft.data import scan_photos  # noqa: E402
from graft.features.loader import train_loader  # noqa: E402

KNOBS = "crop_scale=0.08-1,flip=0.5,brightness=0.4,contrast=0.4,saturation=0.4,rgb_shift=10,rgb_shift_p=1"
BATCH = 32
TIMED_EPOCHS = 3  # after one warm-up epoch; each side is measured twice, interleaved, best kept


def graft_epoch_rate(samples, workers: int, decoded_dir=None) -> float:
    pipeline = build("none", KNOBS, size=224)
    loader = train_loader(samples, pipeline, PRE, seed=0, batch_size=BATCH, workers=workers,
                          decoded_dir=decoded_dir)
    t, n = 0.0, 0
    for epoch in range(1 + TIMED_EPOCHS):  # warm-up (fills the decoded cache when given one), then timed
        loader.batch_sampler.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        for _, batch, _ in loader:
            x = PRE.normalize(batch)  # the consumer's share: uint8 -> normalised float
            n += len(x) if epoch else 0
        t += time.perf_counter() - t0 if epoch else 0.0
    del loader
    return n / t


def torchvision_epoch_rate(root: Path, workers: int) -> float:
    from torchvision import datasets, transforms as T

    tf = T.Compose([
        T.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.4, 0.4, 0.4),
        T.ToTensor(),
        T.Normalize([0.5] * 3, [0.5] * 3),
    ])
    ds = datasets.ImageFolder(str(root), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0,
                                         prefetch_factor=4 if workers else None)
    t, n = 0.0, 0
    for epoch in range(1 + TIMED_EPOCHS):
        t0 = time.perf_counter()
        for x, _ in loader:
            n += len(x) if epoch else 0
        t += time.perf_counter() - t0 if epoch else 0.0
    del loader
    return n / t


def compare(samples, folder, workers, decoded_dir, reps: int = 2) -> dict:
    """graft decoding every epoch, graft with its decoded-photo cache warm, torchvision: each
    measured `reps` times, interleaved (so a busy moment of the machine hits both sides), best
    kept."""
    g = gd = t = 0.0
    for _ in range(reps):
        t = max(t, torchvision_epoch_rate(folder, workers))
        g = max(g, graft_epoch_rate(samples, workers))
        gd = max(gd, graft_epoch_rate(samples, workers, decoded_dir=decoded_dir))
    print(f"  workers={workers}: torchvision {t:7.1f} img/s | graft {g:7.1f} img/s ({g / t:.2f}x) | "
          f"graft, photos decoded once {gd:7.1f} img/s ({gd / t:.2f}x)")
    return {"torchvision": round(t, 1), "graft": round(g, 1), "graft_decoded_once": round(gd, 1),
            "ratio": round(g / t, 2), "ratio_decoded_once": round(gd / t, 2)}


def make_big_photos(src_root: Path, dst: Path, n: int) -> Path:
    """12-megapixel (4000 x 3000) JPEGs at quality 90, upscaled from the real photos."""
    count = 0
    for cls_dir in sorted(p for p in (src_root / "train").iterdir() if p.is_dir()):
        (dst / cls_dir.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls_dir.glob("*.jpg"))[: n // 2]:
            img = Image.open(f).convert("RGB")
            big = img.resize((4000, 3000) if img.width >= img.height else (3000, 4000), Image.Resampling.BICUBIC)
            big.save(dst / cls_dir.name / f.name, quality=90)
            count += 1
    print(f"made {count} 12-megapixel JPEGs in {dst}", file=sys.stderr)
    return dst


def op_costs(samples) -> dict:
    """Microseconds per image for each step, averaged over the photos (one thread)."""
    from graft.augment import ColorJitter, Flip, LocalWarp, PCAColor, Pipeline, RGBShift, Rotate, Shear
    from graft.data.images import read_image
    from graft.backbones.preprocess import pil_to_tensor

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    paths = [s.path for s in samples[:40]]
    imgs = [pil_to_tensor(read_image(p).resize((224, 224))) for p in paths]
    costs = {}

    def timed(name, fn, items):
        t = time.perf_counter()
        for it in items:
            fn(it)
        costs[name] = round((time.perf_counter() - t) / len(items) * 1e6)

    timed("decode full (PIL)", lambda p: Image.open(p).convert("RGB"), paths)
    timed("decode graft (draft for 224 crop of 1/4 area)", lambda p: read_image(p, min_size=(448, 448)), paths)
    pils = [Image.open(p).convert("RGB") for p in paths]
    timed("crop+resize PIL box", lambda im: im.resize((224, 224), Image.Resampling.BICUBIC,
                                                               box=(0, 0, im.width // 2, im.height // 2)), pils)
    from torchvision.transforms.v2 import functional as F

    big = [pil_to_tensor(im) for im in pils]
    timed("crop+resize tensor uint8 (graft: torchvision kernel)", lambda t: F.resized_crop(
        t, 0, 0, t.shape[1] // 2, t.shape[2] // 2, [224, 224], interpolation=F.InterpolationMode.BICUBIC,
        antialias=True), big)
    for op in (Flip(1.0), Rotate(15, p=1.0), Shear(10, p=1.0), LocalWarp(3.0, 8.0, p=1.0),
               ColorJitter(0.4, 0.4, 0.4), PCAColor(0.1), RGBShift(10, p=1.0)):
        timed(f"{op.name}", lambda t, op=op: op(t, gen), imgs)

    run = Pipeline([ColorJitter(0.4, 0.4, 0.4), RGBShift(10, p=1.0)])
    pairs = [(t, run.draw(gen, (224, 224))) for t in imgs]
    timed("color_jitter + rgb_shift, one by one", lambda ip: run.apply(ip[0], ip[1]), pairs)
    timed("color_jitter + rgb_shift, fused (graft's loader)", lambda ip: run.apply_fused(ip[0], ip[1]), pairs)
    timed("normalise (consumer)", lambda t: PRE.normalize(t[None]), imgs)
    from torchvision import transforms as T

    tv = T.Compose([T.ColorJitter(0.4, 0.4, 0.4)])
    small = [im.resize((224, 224)) for im in pils]
    timed("torchvision PIL ColorJitter", tv, small)
    timed("torchvision ToTensor+Normalize", lambda im: T.Normalize([0.5] * 3, [0.5] * 3)(T.ToTensor()(im)), small)
    torch.set_num_threads(2)
    return costs


def geometry_costs(samples, n_photos: int = 40, reps: int = 5) -> dict:
    """The heavy preset's geometry per photo, op by op vs one resample (see the module's doc)."""
    from graft.augment import Pipeline, RandomResizedCrop
    from graft.data.images import read_image
    from graft.backbones.preprocess import pil_to_tensor

    torch.set_num_threads(1)
    figures = {}
    for label, knobs in (("as drawn", ""), ("every op drawn", "rotate_p=1,shear_p=1,warp_p=1")):
        geo = Pipeline(op for op in build("heavy", knobs, size=224).ops if op.fuses is not None)
        items = []
        for i, s in enumerate(samples[:n_photos]):  # the region the loader decodes (DCT-reduced)
            w, h = s.size
            params = geo.draw(torch.Generator().manual_seed(i), (h, w))
            box = params[0]
            img = read_image(s.path, min_size=(math.ceil(w * 224 / box["width"]), math.ceil(h * 224 / box["height"])))
            if img.size != (w, h):
                box = RandomResizedCrop.scale_params(box, (h, w), (img.height, img.width))
            region = pil_to_tensor(img.crop((box["left"], box["top"], box["left"] + box["width"],
                                             box["top"] + box["height"])))
            whole = {"top": 0, "left": 0, "height": region.shape[1], "width": region.shape[2]}
            items.append((region, [whole] + params[1:]))
        times = {"op_by_op": [[] for _ in items], "one_resample": [[] for _ in items]}
        for _ in range(reps):
            for k, (region, params) in enumerate(items):
                t0 = time.perf_counter()
                geo.apply(region, params)
                t1 = time.perf_counter()
                geo.apply_fused(region, params)
                t2 = time.perf_counter()
                times["op_by_op"][k].append(t1 - t0)
                times["one_resample"][k].append(t2 - t1)
        row = {}
        for side, per_photo in times.items():
            row[f"{side}_mean_ms"] = round(sum(map(sum, per_photo)) / (reps * len(items)) * 1e3, 2)
            row[f"{side}_best_ms"] = round(sum(map(min, per_photo)) / len(items) * 1e3, 2)
        row["ratio_mean"] = round(row["op_by_op_mean_ms"] / row["one_resample_mean_ms"], 1)
        row["ratio_best"] = round(row["op_by_op_best_ms"] / row["one_resample_best_ms"], 1)
        figures[label.replace(" ", "_")] = row
        print(f"  heavy geometry, {label:<15} op by op {row['op_by_op_mean_ms']:6.2f} ms "
              f"(best {row['op_by_op_best_ms']:.2f}) | one resample {row['one_resample_mean_ms']:5.2f} ms "
              f"(best {row['one_resample_best_ms']:.2f}) | {row['ratio_mean']}x (best {row['ratio_best']}x)")
    torch.set_num_threads(2)
    return figures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=int, default=48, help="12-megapixel photos to make (default 48)")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--ops-only", action="store_true", help="only the per-op table (skip the loader runs)")
    args = ap.parse_args()
    root = need_hymenoptera()
    workers = [] if args.ops_only else [int(w) for w in args.workers.split(",")]
    figures = {}
    train = scan_photos(root).train
    print(f"hymenoptera train photos: {len(train)}")
    with tempfile.TemporaryDirectory() as tmp:
        for w in workers:
            # An epoch of these small photos takes well under a second: a third repeat costs
            # little and steadies the figure on a shared machine.
            figures[f"hym_w{w}"] = compare(train, root / "train", w, Path(tmp) / f"decoded-hym-{w}", reps=3)
        if workers:
            big_root = make_big_photos(root, Path(tmp) / "big", args.big)
            big = scan_photos(Path(tmp) / "big", val_split=0.5)
            big_samples = big.train + big.val
            print(f"12-megapixel photos: {len(big_samples)}")
            for w in workers:
                figures[f"big_w{w}"] = compare(big_samples, big_root, w, Path(tmp) / f"decoded-big-{w}")
    costs = op_costs(train)
    print("per-op cost, microseconds per image (one thread):")
    for k, v in costs.items():
        print(f"  {k:<48} {v:>8}")
    figures["op_us"] = costs
    figures["heavy_geometry"] = geometry_costs(train)
    emit(figures)


if __name__ == "__main__":
    main()
