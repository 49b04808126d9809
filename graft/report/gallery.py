"""The report's sections that show photos: the most confidently wrong validation photos (from
the predictions training stored, see graft.report) and the augmentation preview."""

from __future__ import annotations

import io
import json
import logging
import tempfile
from pathlib import Path

from ..errors import GraftError
from .page import esc, img_tag, section

log = logging.getLogger("graft")

THUMB = 128  # pixels: longest side of a gallery thumbnail
GALLERY_WRONG = 12  # most confidently wrong validation photos shown
GALLERY_CLOSE = 6  # correct but least confident validation photos shown
PREVIEW_PHOTOS = 3  # photos in the augmentation preview
PREVIEW_DRAWS = 5


def _thumb_png(path) -> bytes:
    from PIL import ImageOps

    from ..data.images import read_image

    img = ImageOps.contain(read_image(path, min_short_side=THUMB), (THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _card(p: dict, kind: str) -> str:
    try:
        thumb = img_tag(_thumb_png(p["path"]), Path(p["path"]).name)
    except Exception as e:  # the file changed since: show the caption anyway
        thumb = f'<div class="nothumb">{esc(type(e).__name__)}</div>'
    name = Path(p["path"]).name
    return f"""<figure class="card {kind}" title="{esc(p['path'])}">{thumb}
<figcaption><div class="fname">{esc(name)}</div>
<div>true <b>{esc(p['true'])}</b></div>
<div>predicted <b>{esc(p['pred'])}</b></div>
<div>score <span class="prob">{p['probability']:.3f}</span></div>
{"" if p["correct"] else f'<div class="muted">true class {p["true_probability"]:.3f}</div>'}
</figcaption></figure>"""


def gallery(run_dir, preds: list[dict] | None, note: str) -> str:
    """The most confidently wrong validation photos, then the closest calls among the right ones.
    `preds`: graft.report's prediction items; `note` says where they come from, or with `preds`
    None why there are none (default: the photos are needed)."""
    title = "Most confidently wrong validation photos"
    if preds is None:
        return section(title, note or '<p class="muted">The gallery needs the photos: rebuild this report with '
                                      f"<code>graft report {esc(run_dir)} --photos PHOTOS</code>.</p>")
    if not preds:
        return section(title, '<p class="muted">No validation photo to show.</p>')
    wrong = sorted((p for p in preds if not p["correct"]), key=lambda p: -p["probability"])
    close = sorted((p for p in preds if p["correct"]), key=lambda p: p["true_probability"])
    body = [f'<p class="muted">{note}</p>']
    if wrong:
        body.append(f'<div class="gallery">{"".join(_card(p, "wrong") for p in wrong[:GALLERY_WRONG])}</div>')
        if len(wrong) > GALLERY_WRONG:
            body.append(f'<p class="muted">... and {len(wrong) - GALLERY_WRONG} more wrong.</p>')
    else:
        body.append("<p>No validation photo is misclassified.</p>")
    if close:
        body.append("<h3>Closest calls among the right ones</h3>")
        body.append(f'<div class="gallery">{"".join(_card(p, "close") for p in close[:GALLERY_CLOSE])}</div>')
    return section(title, "\n".join(body))


def augmentation(meta, m, data) -> str:
    """The run's augmentation settings and, given its training photos (`data`), a preview."""
    aug = meta.get("augmentation") or m.get("augmentation")
    if not aug or not aug.get("pipeline"):
        return ""
    desc = ", ".join(f"{k}" for k in aug["pipeline"])
    head = (f"<p>Preset <b>{esc(aug.get('preset', '?'))}</b>"
            + (f", {esc(aug['views'])} cached augmented view(s) per training photo" if aug.get("views") else "")
            + f"; ops in order: {esc(desc)}.</p>")
    details = f"<details><summary>pipeline settings</summary><pre>{esc(json.dumps(aug['pipeline'], indent=1))}</pre></details>"
    if data is None:
        return section("Augmentation", head + '<p class="muted">A preview needs the photos '
                        "(<code>--photos PHOTOS</code>).</p>" + details)
    try:
        png = _augmentation_png(aug["pipeline"], data)
    except Exception as e:  # a preview is a nicety: never lose the whole report to it
        log.warning("report: no augmentation preview: %s", e)
        return section("Augmentation", head + f'<p class="warn">No preview: {esc(e)}</p>' + details)
    return section("Augmentation", head + img_tag(png, "augmentation preview", "preview") + details)


def _augmentation_png(pipeline: dict, data) -> bytes:
    from ..augment import preview_grid
    from ..data.folder import spread_over_classes
    from ..data.images import read_image

    picked = spread_over_classes(data.train, PREVIEW_PHOTOS)
    if not picked:
        raise GraftError("no training photo found")
    size = int(next((v.get("size") for v in pipeline.values() if isinstance(v, dict) and v.get("size")), 224))
    images = [read_image(s.path, min_short_side=2 * size) for s in picked]
    with tempfile.TemporaryDirectory(prefix="graft-report-") as tmp:
        out = preview_grid(images, pipeline, Path(tmp) / "preview.png", n_draws=PREVIEW_DRAWS, cell=THUMB)
        from PIL import Image

        with Image.open(out) as sheet:  # a 256-colour palette: about half the bytes, same look
            buf = io.BytesIO()
            sheet.convert("RGB").quantize(256).save(buf, format="PNG", optimize=True)
        return buf.getvalue()
