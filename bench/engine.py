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

`--gate MODEL` instead: the quality gate a quantised or bf16 engine must pass before graft may use
it (issue 21). Candidates (`--candidates`, default all): OpenVINO with its bf16 inference precision
(`openvino_bf16`, the CPU's AVX512-BF16/AMX; and `openvino_f32` for reference); static QDQ quantisation (onnxruntime.quantization, per-channel int8 weights, uint8
activations, MinMax on 128 training photos: 64 ants/bees train/, 64 trashnet train/), as is and
with the stem and the depthwise convs left in fp32; for each, photos/s against fp32 (interleaved),
the cosine of its features to fp32's, and the linear probe's accuracy (graft.heads.probe: L2
strength by 5-fold CV on the fitting photos) fitted on ants/bees train/ scored on val/, fitted on
every third trashnet train/ photo scored on all of test/. The gate: cosine >= 0.995 on 99% of the
photos and accuracy within 0.3 points of fp32 on both sets.

    .venv/bin/python bench/engine.py --gate lite1 [--candidates int8,openvino_bf16]
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
    ap.add_argument("--gate", metavar="MODEL", help="run the quality gate of the candidate engines for MODEL instead")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    args = ap.parse_args()
    if args.gate:
        gate(args.gate, args.candidates.split(","))
        return
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


# --- the quality gate of the quantised and bf16 engines ----------------------------------------------------------------------

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
COS_MIN, COS_SHARE, ACC_POINTS = 0.995, 0.99, 0.3
CANDIDATES = ("int8", "int8_fp32_stem_depthwise", "openvino_f32", "openvino_bf16")


def _labelled(root: Path, step: int = 1) -> list[tuple[str, int]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    return [(str(f), c) for c, name in enumerate(classes) for f in sorted((root / name).iterdir())[::step]]


def _crops(pre, files):
    import numpy as np

    from graft.features.loader import image_loader

    xs, ys = [], []
    for idx, batch, _ in image_loader([f for f, _ in files], pre.load, batch_size=32, workers=1):
        if batch is not None:  # (the one GIF that is no ant decodes: it is kept, as graft keeps it)
            xs.append(batch.numpy())
            ys += [files[i][1] for i in idx]
    return np.concatenate(xs), np.array(ys)


def _quantise(fp32: Path, out: Path, calib, pre, exclude) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(range(0, len(calib), 16))

        def get_next(self):
            i = next(self.it, None)
            return None if i is None else {"input": pre.normalize(torch.from_numpy(calib[i:i + 16])).numpy()}

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude)
    return out


def _ort_run(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = eng.intra_op_threads(), 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x})[0]


def _openvino_run(path: Path, precision: str):
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                          "INFERENCE_NUM_THREADS": eng.intra_op_threads()})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[0].copy()


def _candidates(b, pre, crops, tmp: str, wanted: list[str]) -> dict:
    """name -> a function from a normalised batch to its features, fp32 (onnxruntime) first."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import quant_pre_process

    fp32 = eng.export(b, eng.onnx_path(b, tmp))
    runs = {"fp32": _ort_run(fp32)}
    if any(w.startswith("int8") for w in wanted):
        calib = np.concatenate([crops["ab_train"][0][::3][:64], crops["tn_train"][0][::5][:64]])  # train/ only
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        convs = [n for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
        depthwise = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
        if "int8" in wanted:
            runs["int8"] = _ort_run(_quantise(prepared, Path(tmp) / "int8.onnx", calib, pre, []))
        if "int8_fp32_stem_depthwise" in wanted:
            runs["int8_fp32_stem_depthwise"] = _ort_run(
                _quantise(prepared, Path(tmp) / "int8dw.onnx", calib, pre, depthwise + [convs[0].name]))
    for precision in ("f32", "bf16"):
        if f"openvino_{precision}" in wanted:
            runs[f"openvino_{precision}"] = _openvino_run(fp32, precision)
    return runs


def gate(name: str, wanted: list[str]) -> None:
    import numpy as np

    from graft.heads.probe import train_probe
    from graft.heads.softmax import predict_labels

    if not (DATA / "hymenoptera_data" / "train").is_dir() or not (DATA / "trashnet" / "train").is_dir():
        print(json.dumps({"skipped": True, "reason": f"{DATA} lacks hymenoptera_data or trashnet"}))
        return
    b = load_backbone(name).eval()
    pre = b.preprocessing
    sets = {"ab_train": _labelled(DATA / "hymenoptera_data" / "train"),
            "ab_val": _labelled(DATA / "hymenoptera_data" / "val"),
            "tn_train": _labelled(DATA / "trashnet" / "train", 3), "tn_test": _labelled(DATA / "trashnet" / "test")}
    crops = {k: _crops(pre, v) for k, v in sets.items()}
    with tempfile.TemporaryDirectory(prefix="graft-gate-") as tmp:
        sessions = _candidates(b, pre, crops, tmp, wanted)

        def feats(run, x):
            return np.concatenate([run(pre.normalize(torch.from_numpy(x[i:i + 32])).numpy())
                                   for i in range(0, len(x), 32)])

        xs, times = crops["ab_val"][0][:64], {k: [] for k in sessions}
        for r in range(3):
            for k, s in list(sessions.items())[:: 1 if r % 2 == 0 else -1]:
                t = time.perf_counter()
                feats(s, xs)
                times[k].append(time.perf_counter() - t)
        F = {k: {n: feats(s, crops[n][0]) for n in crops} for k, s in sessions.items()}

    def probe(k, fit, score):
        y = crops[fit][1]
        head = train_probe(F[k][fit], y, int(y.max()) + 1).head
        return float((predict_labels(head, F[k][score]) == crops[score][1]).mean())

    rows = {}
    for k in sessions:
        row = {"photos_s": round(64 / statistics.median(times[k]), 1), "acc_ants_bees": probe(k, "ab_train", "ab_val"),
               "acc_trashnet": probe(k, "tn_train", "tn_test")}
        if k != "fp32":
            a, q = (np.concatenate([F[v][n] for n in crops]) for v in ("fp32", k))
            cos = (a * q).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(q, axis=1)
            row.update(cos_mean=round(float(cos.mean()), 4), cos_min=round(float(cos.min()), 4),
                       cos_p01=round(float(np.quantile(cos, 1 - COS_SHARE)), 4))
            row["passes"] = bool(row["cos_p01"] >= COS_MIN and all(
                (rows["fp32"][m] - row[m]) * 100 <= ACC_POINTS + 1e-9 for m in ("acc_ants_bees", "acc_trashnet")))
        rows[k] = row
        print(k, row, flush=True)
    print(json.dumps({"model": name, "photos": {k: len(v[1]) for k, v in crops.items()}, "gate": {
        "cos_min": COS_MIN, "cos_share": COS_SHARE, "acc_points": ACC_POINTS}, "results": rows}))


if __name__ == "__main__":
    main()
