"""What the feature cache buys: 30 epochs of head training on hymenoptera, three ways, one run.

(a) recompute: every epoch pushes every training image through the frozen backbone again (as the
    PyTorch tutorial's fixed-feature-extractor does); validation features are computed once.
(b) cold: `graft.train` on an empty cache (extraction of train + val included).
(c) warm: `graft.train` again on the now-filled cache.
All three train the same head (graft.heads.softmax.HeadTrainer, same seed, 30 epochs, no early stop).

    .venv/bin/python bench/cache_speedup.py
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, need_hymenoptera  # noqa: E402

import graft  # noqa: E402
from graft.backbones import load_backbone  # noqa: E402
from graft.data import scan_photos  # noqa: E402
from graft.heads.softmax import HeadConfig, HeadTrainer  # noqa: E402
from graft.features.loader import image_loader  # noqa: E402

EPOCHS = 30


def forward_all(backbone, paths) -> np.ndarray:
    pre = backbone.preprocessing
    out = []
    with torch.inference_mode():
        for _, batch, _ in image_loader(paths, pre.load, batch_size=32):
            x = pre.normalize(batch).contiguous(memory_format=torch.channels_last)
            out.append(backbone(x).numpy())
    return np.concatenate(out)


def recompute_every_epoch(root) -> tuple[float, float]:
    t0 = time.perf_counter()
    data = scan_photos(root)
    backbone = load_backbone().eval().to(memory_format=torch.channels_last)
    train_paths = [s.path for s in data.train]
    y_train = [s.label for s in data.train]
    x_val = forward_all(backbone, [s.path for s in data.val])
    cfg = HeadConfig(epochs=EPOCHS, patience=0)
    trainer = None
    for _ in range(EPOCHS):
        x_train = forward_all(backbone, train_paths)
        if trainer is None:  # standardisation statistics from the first epoch's features
            trainer = HeadTrainer(x_train, y_train, x_val, [s.label for s in data.val], len(data.classes), cfg)
        trainer.run_epoch(trainer.standardise(x_train))
        print(f"  (a) epoch {trainer.epoch}/{EPOCHS}  {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    result = trainer.result()
    with torch.no_grad():
        acc = (result.head(torch.from_numpy(x_val)).argmax(1).numpy() == np.array([s.label for s in data.val])).mean()
    return time.perf_counter() - t0, float(acc)


def main():
    root = need_hymenoptera()
    with tempfile.TemporaryDirectory() as tmp:
        kw = dict(cache_dir=Path(tmp) / "cache", epochs=EPOCHS, patience=0, progress=False)
        t = time.perf_counter()
        cold = graft.train(root, Path(tmp) / "cold", **kw)
        time_b = time.perf_counter() - t
        t = time.perf_counter()
        warm = graft.train(root, Path(tmp) / "warm", **kw)
        time_c = time.perf_counter() - t
        assert warm.metrics["cache"]["misses"] == 0
    time_a, acc_a = recompute_every_epoch(root)
    print(f"(a) recompute every epoch  {time_a:8.2f} s   val acc {acc_a:.4f}")
    print(f"(b) cold cache             {time_b:8.2f} s   val acc {cold.val_accuracy:.4f}")
    print(f"(c) warm cache             {time_c:8.2f} s   val acc {warm.val_accuracy:.4f}")
    print(f"a/b = {time_a / time_b:.1f}x   a/c = {time_a / time_c:.1f}x")
    emit({"epochs": EPOCHS, "time_a_s": round(time_a, 3), "time_b_s": round(time_b, 3),
          "time_c_s": round(time_c, 3), "ratio_a_b": round(time_a / time_b, 2),
          "ratio_a_c": round(time_a / time_c, 2), "acc_a": round(acc_a, 4),
          "acc_b": round(cold.val_accuracy, 4), "acc_c": round(warm.val_accuracy, 4)})


if __name__ == "__main__":
    main()
