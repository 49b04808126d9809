"""Does the exported model, run by the reference client, give graft's answers? And what does the
standard recipe's full JPEG decode cost?

On hymenoptera: a head run (trained here, or --run), calibrated, exported to ONNX; then for every
val photo the written RUN/predict_onnx.py's own `preprocess` and onnxruntime session against
graft's prediction path:
  * probabilities: the client's `probabilities` output vs `graft.predict` with the torch engine,
    graft's own network (targets: max |dp| <= 1e-3, 0 top-1 changes);
  * answers: the client's `predict` (temperature, `unknown`) vs `graft predict --reject auto`
    (graft.use.inference.predict_with_reject); a photo whose confidence or novelty lies within 1e-5 of
    its threshold is counted apart (graft.use.calibrate sets the confidence threshold at one validation
    photo's exact confidence, so on that photo float rounding alone decides).
For scale, the same exported model on the crops graft made before (recipe 1: reduced-size JPEG
decoding, long side rounded up, box resize) and on crops of a draft decode with today's rounding.
Speed: decode + resize + crop per photo, full decode vs draft, interleaved, on the val photos and on
eight 12-megapixel JPEGs made from them (upscaled, with sensor-like noise).

    .venv/bin/python bench/export_parity.py [--run RUN]
"""

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, need_hymenoptera  # noqa: E402

import graft  # noqa: E402
from graft.backbones.preprocess import _PIL_INTERPOLATION, Preprocessing  # noqa: E402
from graft.use.calibrate import calibrate_run  # noqa: E402
from graft.data.images import draft_size_for_short_side, read_image  # noqa: E402
from graft.use.export import export_run  # noqa: E402
from graft.use.inference import predict_with_reject  # noqa: E402
from graft.run.store import read_record  # noqa: E402

MAX_DP, TOP1 = 1e-3, 0


def load_client(path: Path):
    spec = importlib.util.spec_from_file_location("predict_onnx", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe1(pre: Preprocessing, path) -> np.ndarray:
    """The crop graft made before recipe 2 (its Preprocessing.load, as it was)."""
    img = read_image(path, min_short_side=pre.resize)
    tw, th = draft_size_for_short_side(img.size, pre.resize)
    if (tw, th) != img.size:
        cw, ch = min(pre.size, tw), min(pre.size, th)
        left, top = (tw - cw) // 2, (th - ch) // 2
        sx, sy = img.size[0] / tw, img.size[1] / th
        box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
        img = img.resize((cw, ch), _PIL_INTERPOLATION[pre.interpolation], box=box)
    arr = np.asarray(img)
    h, w = arr.shape[:2]
    top, left = (h - pre.size) // 2, (w - pre.size) // 2
    return arr[top:top + pre.size, left:left + pre.size]


def draft_crop(pre: Preprocessing, path) -> np.ndarray:
    """Today's rounding, but on a reduced-size (draft) JPEG decode."""
    return pre.crop_array(read_image(path, min_short_side=pre.resize))


def full_crop(pre: Preprocessing, path) -> np.ndarray:
    return pre.crop_array(read_image(path))


def on_threshold(answer: dict, cal: dict, eps: float = 1e-5) -> bool:
    """Whether graft's confidence or novelty is within `eps` of the threshold it is tested against:
    there float rounding decides (graft.use.calibrate puts the threshold ON a validation photo's value)."""
    near = abs(answer["confidence"] - cal["threshold"]) <= eps
    if cal.get("novelty") and "novelty" in answer:
        near |= abs(answer["novelty"] - cal["novelty"]["threshold"]) <= eps
    return near


def compare(p: np.ndarray, q: np.ndarray) -> dict:
    d = np.abs(p - q)
    return {"max_abs_dp": float(d.max()), "mean_abs_dp": float(d.mean()),
            "top1_changes": int((p.argmax(1) != q.argmax(1)).sum())}


def probabilities(session, crops, batch=32) -> np.ndarray:
    return np.concatenate([session.run(["probabilities"], {"image": crops[i:i + batch]})[0]
                           for i in range(0, len(crops), batch)])


def time_decode(pre, paths, reps) -> dict:
    """ms per photo of full_crop and draft_crop, the two alternating photo by photo."""
    t = {"full": 0.0, "draft": 0.0}
    for _ in range(reps):
        for p in paths:
            for name, fn in (("full", full_crop), ("draft", draft_crop)):
                t0 = time.perf_counter()
                fn(pre, p)
                t[name] += time.perf_counter() - t0
    return {k: 1000 * v / (reps * len(paths)) for k, v in t.items()}


def make_12mp(sources, folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    out = []
    for i, src in enumerate(sources):
        img = read_image(src)
        w, h = (4000, 3000) if img.width >= img.height else (3000, 4000)
        a = np.asarray(img.resize((w, h), Image.Resampling.BICUBIC)).astype(np.int16)
        a += rng.normal(0, 4, a.shape).round().astype(np.int16)
        path = folder / f"12mp_{i}.jpg"
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, quality=92)
        out.append(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, help="a run trained on hymenoptera to reuse (default: train a head run)")
    args = ap.parse_args()
    data = need_hymenoptera()
    with tempfile.TemporaryDirectory(prefix="graft-parity-") as tmp:
        tmp = Path(tmp)
        run = tmp / "run"
        if args.run and (args.run / "model.json").is_file():  # a copy: calibrated and exported here
            run.mkdir()
            for name in ("model.json", "model.safetensors"):
                shutil.copy(args.run / name, run / name)
        else:
            t0 = time.perf_counter()
            graft.train(data, run, strategy="head", report=False, progress=False)
            print(f"trained {run} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        calibrate_run(run, data)
        onnx_file = export_run(run, "onnx")
        client = load_client(onnx_file.parent / "predict_onnx.py")
        session, meta = client.load(onnx_file)
        classes = list(read_record(run).classes)
        assert meta["classes"] == classes
        pre = Preprocessing.from_json(meta["preprocessing"])
        paths = sorted(p for p in (data / "val").rglob("*") if p.is_file())

        # the client's preprocessing and session vs graft's prediction path
        crops = np.stack([client.preprocess(p, meta["preprocessing"]) for p in paths])
        p_client = probabilities(session, crops)
        # graft's own network in torch: the run now has a fresh export, which graft.predict would run
        results = graft.predict(run, paths, topk=len(classes), engine="torch")
        p_graft = np.array([[{d["class"]: d["probability"] for d in r["predictions"]}[c] for c in classes]
                            for r in results])
        parity = compare(p_client, p_graft)
        answers = [a for i in range(0, len(crops), 32) for a in client.predict(session, meta, crops[i:i + 32])]
        graft_answers = predict_with_reject(run, paths, topk=len(classes), reject="auto", engine="torch")
        changed = [(p, a, g) for p, a, g in zip(paths, answers, graft_answers) if a[0] != g["class"]]
        cal = meta["calibration"]
        edge = [c for c in changed if on_threshold(c[2], cal)]
        label_changes = len(changed) - len(edge)
        for p, a, g in changed:
            print(f"answer changed: {p.name}: client {a[0]} ({a[1][0][1]:.9f}), graft {g['class']} "
                  f"(confidence {g['confidence']}, novelty {g.get('novelty')}); thresholds: confidence "
                  f"{cal['threshold']!r}, novelty {(cal['novelty'] or {}).get('threshold')!r}", file=sys.stderr)
        calibrated_dp = max(abs(a[1][0][1] - g["predictions"][0]["probability"])
                            for a, g in zip(answers, graft_answers))
        n_unknown = sum(g["class"] == "unknown" for g in graft_answers)

        # for scale: the crops graft made before, and a draft decode with today's rounding
        old = compare(probabilities(session, np.stack([recipe1(pre, p) for p in paths])), p_client)
        draft = compare(probabilities(session, np.stack([draft_crop(pre, p) for p in paths])), p_client)
        draftable = sum(read_image(p, min_short_side=pre.resize).size != read_image(p).size for p in paths)

        # speed of the full decode the recipe needs, and what a draft decode would change at 12 MP
        speed_val = time_decode(pre, paths, reps=2)
        big = make_12mp(paths[::len(paths) // 8][:8], tmp)
        speed_12mp = time_decode(pre, big, reps=2)
        full_big = np.stack([full_crop(pre, p) for p in big])
        draft_12mp = compare(probabilities(session, np.stack([draft_crop(pre, p) for p in big])),
                             probabilities(session, full_big))

    ok = parity["max_abs_dp"] <= MAX_DP and parity["top1_changes"] <= TOP1 and label_changes == 0
    print(f"\n{len(paths)} hymenoptera val photos, {len(classes)} classes; ONNX {onnx_file.name} via "
          f"predict_onnx.py vs graft ({n_unknown} answered unknown by graft predict --reject auto)\n")
    print(f"{'comparison':<52}{'max |dp|':>10}{'mean |dp|':>11}{'top-1 changes':>15}")
    rows = [("client vs graft.predict  (target <= 1e-3, 0)", parity),
            ("recipe 1 crops (draft, ceil) vs client", old),
            (f"draft decode, today's rounding vs client ({draftable} drafted)", draft),
            ("12-MP JPEGs: draft decode vs full decode (8)", draft_12mp)]
    for name, r in rows:
        print(f"{name:<52}{r['max_abs_dp']:>10.2e}{r['mean_abs_dp']:>11.2e}{r['top1_changes']:>15d}")
    print(f"client answers vs graft predict --reject auto: {label_changes} label changes "
          f"(+{len(edge)} of photos within 1e-5 of a threshold), max |dp| of the calibrated top "
          f"probability {calibrated_dp:.2e}")
    print(f"\ndecode + resize + crop, ms per photo   {'full decode':>12}{'draft':>8}")
    print(f"  hymenoptera val ({len(paths)})              {speed_val['full']:>12.1f}{speed_val['draft']:>8.1f}")
    print(f"  12-MP JPEG (8)                       {speed_12mp['full']:>12.1f}{speed_12mp['draft']:>8.1f}")
    print(f"\n{'PASS' if ok else 'FAIL'}: max |dp| {parity['max_abs_dp']:.2e} (<= {MAX_DP:g}), "
          f"{parity['top1_changes']} top-1 changes, {label_changes} answer changes off the thresholds")
    emit({"bench": "export_parity", "photos": len(paths), **parity, "pass": ok,
          "targets": {"max_abs_dp": MAX_DP, "top1_changes": TOP1},
          "reject_label_changes": label_changes, "reject_changes_on_threshold": len(edge),
          "reject_max_abs_dp": calibrated_dp, "unknown": n_unknown,
          "recipe1_vs_client": old, "draft_vs_client": draft, "draftable_val_photos": draftable,
          "draft_vs_full_12mp": draft_12mp,
          "ms_per_photo": {"val_full": round(speed_val["full"], 2), "val_draft": round(speed_val["draft"], 2),
                           "12mp_full": round(speed_12mp["full"], 2), "12mp_draft": round(speed_12mp["draft"], 2)}})


if __name__ == "__main__":
    main()
