"""A contact sheet of augmented photos, so a user can see what an augmentation setting does
before training with it: each photo raw and under several random draws of the whole pipeline,
then one row per op showing that op alone, labelled with its hyperparameters.
"""

import dataclasses
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, PngImagePlugin
from torchvision.transforms.v2 import functional as F

from graft._util.atomic import atomic_path
from graft._util.output import check_output, read_head

from graft.augment._geometry import RandomResizedCrop
from graft.augment._op import RandomOp
from graft.augment._pipeline import AugConfig, Pipeline

LABEL_H = 20  # pixels of label strip above every row of cells
MAX_SIDE = 768  # photos are shrunk to at most this side first, to keep the preview fast
_BACKGROUND = (32, 32, 32)
_SIGNED = ("Software", "graft augment preview")  # the PNG text chunk that marks a preview as graft's


def preview_grid(images, pipeline_or_config, out_path, n_draws: int = 6, seed: int = 0, cell: int = 160) -> Path:
    """Write one PNG to `out_path` (atomically) and return its path.

    images: PIL images or uint8 (3, H, W) tensors. pipeline_or_config: a Pipeline, an AugConfig
    or its {op name: hyperparameters} mapping. The sheet has 1 + n_draws columns of `cell`-pixel
    square cells and len(images) + len(ops) rows, each under a LABEL_H-pixel label:
    - per photo: the photo, then n_draws draws of the whole pipeline;
    - per op: its input, then n_draws draws of that op alone, with probability p raised to 1 so
      every cell shows the effect. Crop rows start from the first photo; other op rows from its
      central crop at the pipeline's output size, so pixel-sized settings look as in training.
    All draws come from one generator seeded with `seed`, so the sheet is reproducible.
    """
    out_path = check_output(out_path, "--out", is_ours=is_preview)  # before any work
    pipeline = _as_pipeline(pipeline_or_config)
    photos = [_shrink(_as_tensor(im)) for im in images]
    if not photos:
        raise ValueError("preview_grid needs at least one photo")
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i, photo in enumerate(photos, start=1):
        draws = [pipeline(photo, gen) for _ in range(n_draws)]
        rows.append((f"photo {i}: original, then {n_draws} draws of the whole pipeline", [photo, *draws]))
    for op in pipeline.ops:
        shown, note = _always_applied(op)
        source = photos[0] if isinstance(op, RandomResizedCrop) else _central(photos[0], pipeline)
        draws = [shown(source, gen) for _ in range(n_draws)]
        rows.append((f"{op.name}: {_format_hparams(op.hparams())}{note}", [source, *draws]))
    sheet = _render(rows, 1 + n_draws, cell)
    info = PngImagePlugin.PngInfo()
    info.add_text(*_SIGNED)
    with atomic_path(out_path) as tmp:
        sheet.save(tmp, format="PNG", pnginfo=info)
    return out_path


def is_preview(path) -> bool:
    """A picture preview_grid wrote (its PNG text chunk says so): the only file it replaces."""
    head = read_head(path)
    key, value = _SIGNED
    return head.startswith(b"\x89PNG\r\n\x1a\n") and b"tEXt" + key.encode() + b"\0" + value.encode() in head


def _as_pipeline(obj) -> Pipeline:
    if isinstance(obj, Pipeline):
        return obj
    if isinstance(obj, AugConfig):
        return obj.build()
    return AugConfig(dict(obj)).build()


def _as_tensor(img) -> torch.Tensor:
    if isinstance(img, torch.Tensor):
        if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"preview photos must be uint8 (3, H, W) tensors, got {img.dtype} {tuple(img.shape)}")
        return img
    return F.pil_to_tensor(img.convert("RGB"))


def _shrink(img: torch.Tensor) -> torch.Tensor:
    h, w = img.shape[-2:]
    if max(h, w) <= MAX_SIDE:
        return img
    s = MAX_SIDE / max(h, w)
    return F.resize(img, [max(1, round(h * s)), max(1, round(w * s))], antialias=True)


def _central(photo: torch.Tensor, pipeline: Pipeline) -> torch.Tensor:
    """The largest central box of the pipeline's output aspect ratio, resized to that size."""
    h, w = photo.shape[-2:]
    out_h, out_w = pipeline.output_size((h, w))
    if (out_h, out_w) == (h, w):
        return photo
    scale = min(h / out_h, w / out_w)
    ch, cw = max(1, round(out_h * scale)), max(1, round(out_w * scale))
    return F.resized_crop(photo, (h - ch) // 2, (w - cw) // 2, ch, cw, [out_h, out_w], antialias=True)


def _always_applied(op):
    """The op with its probability raised to 1 (flips keep theirs), and a label note."""
    if not isinstance(op, RandomOp) or op.p in (0.0, 1.0):
        return op, ""
    return dataclasses.replace(op, p=1.0), " (shown with p=1)"


def _format_hparams(hparams: dict) -> str:
    parts = []
    for key, value in hparams.items():
        if key == "eigvecs":
            continue
        if isinstance(value, list):
            value = "[" + ",".join(f"{v:.3g}" for v in value) + "]"
        elif isinstance(value, float):
            value = f"{value:.3g}"
        parts.append(f"{key}={value}")
    return " ".join(parts)


def _render(rows, n_cols: int, cell: int) -> Image.Image:
    sheet = Image.new("RGB", (n_cols * cell, len(rows) * (LABEL_H + cell)), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font()
    for r, (label, images) in enumerate(rows):
        y = r * (LABEL_H + cell)
        draw.text((4, y + 3), _fit(draw, label, font, sheet.width - 8), fill=(235, 235, 235), font=font)
        for c, img in enumerate(images):
            thumb = ImageOps.contain(F.to_pil_image(img), (cell - 4, cell - 4))
            sheet.paste(thumb, (c * cell + (cell - thumb.width) // 2, y + LABEL_H + (cell - thumb.height) // 2))
    return sheet


def _font():
    try:
        return ImageFont.load_default(size=13)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    """`text`, cut short with an ellipsis if it is wider than `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
