"""Classify photos with a model written by `graft export --format onnx`, giving graft's answers.

Needs Pillow, numpy and onnxruntime only. Everything comes from the .onnx file's metadata: the
class names, the preprocessing, and for a calibrated run the temperature and the thresholds
under which graft answers `unknown`.

    python predict_onnx.py RUN/model.onnx photo.jpg [more.jpg ...] [--top 3]

(graft writes this file as RUN/predict_onnx.py; it is not part of the graft package's API. It
imports nothing of graft, so it spells its file names and reads the export's metadata itself.)
"""

import argparse
import json

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def load(model_path):
    """-> (onnxruntime session, metadata dict: classes, preprocessing, calibration, ...)."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    return session, meta


def preprocess(path, pre):
    """The image the network sees, uint8 (H, W, 3) RGB: torchvision's Resize + CenterCrop; for a
    concatenation of backbones ("tiles"), each one's crop, stacked top to bottom, centred across."""
    img = to_rgb(ImageOps.exif_transpose(Image.open(path)))
    if "tiles" not in pre:
        return crop(img, pre)
    crops = [crop(img, tile) for tile in pre["tiles"]]
    width = max(c.shape[1] for c in crops)
    canvas = np.zeros((sum(c.shape[0] for c in crops), width, 3), np.uint8)
    top = 0
    for c in crops:
        left = (width - c.shape[1]) // 2
        canvas[top:top + c.shape[0], left:left + c.shape[1]] = c
        top += c.shape[0]
    return canvas


def to_rgb(img):
    """Any Pillow mode to 8-bit RGB as graft reads a photo: transparency composited over white,
    16-bit and float pixels scaled to 8 bits (Pillow's own convert("RGB") clips a 16-bit PNG to
    white)."""
    if img.mode == "RGB":
        return img
    if img.mode == "La":  # premultiplied alpha: Pillow converts it to LA only
        img = img.convert("LA")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.nan_to_num(np.array(img, dtype=np.float32), nan=0.0, posinf=65535.0, neginf=0.0)
        hi = 65535.0 if img.mode.startswith("I;16") or (arr.size and arr.max() > 255) else 255.0
        arr = np.clip(arr * np.float32(255.0 / hi) + np.float32(0.5), 0, 255)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "PA"):
        return Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def crop(img, pre):
    w, h, r, s = *img.size, pre["resize"], pre["size"]
    long = int(r * max(w, h) / min(w, h))  # the long side is truncated, as torchvision does
    img = img.resize((r, long) if w <= h else (long, r), RESAMPLE[pre["interpolation"]])
    left, top = round((img.width - s) / 2), round((img.height - s) / 2)  # resize >= size: inside
    return np.asarray(img.crop((left, top, left + s, top + s)))


def predict(session, meta, crops):
    """uint8 (N, H, W, 3) -> [(label or "unknown", [(class, probability), ...]), ...]."""
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": crops})))
    cal = meta.get("calibration")
    z = out["logits"].astype(np.float64) / (cal["temperature"] if cal else 1.0)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    answers = []
    for i, row in enumerate(p):
        order = np.argsort(-row, kind="stable")
        unknown = cal is not None and (row[order[0]] < cal["threshold"] or (
            "novelty" in out and out["novelty"][i] > cal["novelty"]["threshold"]))
        answers.append(("unknown" if unknown else meta["classes"][order[0]],
                        [(meta["classes"][c], float(row[c])) for c in order]))
    return answers


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("photos", nargs="+")
    ap.add_argument("--top", type=int, default=3)
    args = ap.parse_args()
    session, meta = load(args.model)
    for path in args.photos:
        [(label, ranked)] = predict(session, meta, preprocess(path, meta["preprocessing"])[None])
        print(f"{path}: {label}  " + "  ".join(f"{c} {p:.6f}" for c, p in ranked[:args.top]))


if __name__ == "__main__":
    main()
