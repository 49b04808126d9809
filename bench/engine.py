"""Which runtime runs extraction's CPU forward pass fastest: torch eager or onnxruntime?

For each backbone (EfficientNet-Lite0 with graft's bundled weights; Lite1 and Lite2 from timm
with random weights, which time the same), batch 32 at the backbone's input size:
- torch: eager, inference mode, channels_last model and input, graft's malloc tuning (imported
  with graft), torch's default threads: exactly as graft extracted before;
- onnxruntime: the session graft.backbones.engine builds (the backbone exported to ONNX, every
  graph optimisation, intra-op threads = the cores this process may use).
The two are timed interleaved in one process (alternating which goes first each round), so
machine load hits both alike; the table gives the median per batch, images/s, the ratio and
the largest |difference| of any feature on the batch (must be <= 1e-4 for the feature cache's
key to ignore the engine).

    .venv/bin/python bench/engine.py [--models lite0,lite1,lite2] [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import graft  # noqa: E402,F401  (applies the malloc tuning, as the CLI does)
from graft.backbones import Backbone, WeightsInfo, load_backbone  # noqa: E402
from graft.backbones import engine as eng  # noqa: E402
from graft.backbones.preprocess import Preprocessing  # noqa: E402

SIZES = {"lite1": 240, "lite2": 260}


def backbone(name: str) -> Backbone:
    if name == "lite0":
        return load_backbone("default")
    import timm

    net = timm.create_model(f"tf_efficientnet_{name}", pretrained=False, num_classes=0)
    size = SIZES[name]
    pre = Preprocessing(size, int(size / 0.882), "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    b = Backbone(net, spec=f"timm:tf_efficientnet_{name}", arch=f"timm:tf_efficientnet_{name}",
                 preprocessing=pre, weights=WeightsInfo("random", "random"))
    return b.to(memory_format=torch.channels_last)


def measure(name: str, rounds: int, batch: int, cache: Path) -> dict:
    b = backbone(name).eval()
    s = b.preprocessing.size
    x = torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(0))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    ort = eng.ort_engine(b, cache)
    setup_s = time.perf_counter() - t0
    if ort is None:
        raise SystemExit(f"{name}: onnxruntime session failed its check (see the warning above)")

    def run_torch():
        with torch.inference_mode():
            return b(x_cl)

    def run_ort():
        return ort(x)

    with torch.inference_mode():
        diff = float((run_torch() - run_ort()).abs().max())
    run_torch(), run_ort()  # warm-up beyond the check above
    times = {"torch": [], "onnxruntime": []}
    for r in range(rounds):
        pair = [("torch", run_torch), ("onnxruntime", run_ort)]
        for label, fn in pair if r % 2 == 0 else pair[::-1]:
            t = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": name, "size": s, "torch_ms": round(med["torch"] * 1000, 1),
            "ort_ms": round(med["onnxruntime"] * 1000, 1), "ratio": round(med["torch"] / med["onnxruntime"], 2),
            "max_abs_diff": diff, "ort_setup_s": round(setup_s, 2),
            "torch_img_s": round(batch / med["torch"], 1), "ort_img_s": round(batch / med["onnxruntime"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lite0,lite1,lite2")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="graft-engine-") as tmp:
        for name in args.models.split(","):
            rows.append(measure(name.strip(), args.rounds, args.batch, Path(tmp)))
            r = rows[-1]
            print(f"{r['model']:6s} {r['size']}px  torch {r['torch_ms']:8.1f} ms ({r['torch_img_s']:6.1f} img/s)  "
                  f"onnxruntime {r['ort_ms']:8.1f} ms ({r['ort_img_s']:6.1f} img/s)  ratio {r['ratio']:.2f}x  "
                  f"max|diff| {r['max_abs_diff']:.2g}  (export+session+check {r['ort_setup_s']:.1f} s)", flush=True)
    print(f"batch {args.batch}, median of {args.rounds} interleaved rounds, torch threads "
          f"{torch.get_num_threads()}, onnxruntime intra-op threads {eng.intra_op_threads()}")
    print(json.dumps({"batch": args.batch, "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
                      "ort_threads": eng.intra_op_threads(), "results": rows,
                      "lite0_ratio": next((r["ratio"] for r in rows if r["model"] == "lite0"), None)}))


if __name__ == "__main__":
    main()
