"""The report's sections that show photos: one photo per class, the most confidently wrong
validation photos (from the predictions training stored, see graft.report) and the augmentation
preview. Every thumbnail and file name links to its photo (file://), names shown whole."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
from pathlib import Path

from graft._util.atomic import write_bytes
from graft._version import __version__
from graft.cache.layout import PREVIEWS, touch
from graft.errors import GraftError
from graft.report.page import esc, file_href, img_tag, section, shown_name
from graft.run.record import AugmentationRecord

log = logging.getLogger("graft")

THUMB = 128  # pixels: longest side of a gallery thumbnail
GALLERY_WRONG = 12  # most confidently wrong validation photos shown
GALLERY_CLOSE = 6  # correct but least confident validation photos shown
PREVIEW_PHOTOS = 3  # photos in the augmentation preview
PREVIEW_DRAWS = 5


def _thumb_png(path) -> bytes:
    from PIL import ImageOps

    from graft.data.images import read_image

    img = ImageOps.contain(read_image(path, min_short_side=THUMB), (THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _thumb(path) -> str:
    """The photo's thumbnail, linked to the photo itself."""
    try:
        inner = img_tag(_thumb_png(path), Path(path).name)
    except Exception as e:  # the file changed since: show the caption anyway
        inner = f'<div class="nothumb">{esc(type(e).__name__)}</div>'
    return f'<a class="photo" href="{file_href(path)}">{inner}</a>'


def _name(path, root) -> str:
    return f'<a class="fname" href="{file_href(path)}">{esc(shown_name(path, root))}</a>'


def _card(p: dict, kind: str, root=None) -> str:
    return f"""<figure class="card {kind}" title="{esc(p['path'])}">{_thumb(p['path'])}
<figcaption>{_name(p['path'], root)}
<div>true <b>{esc(p['true'])}</b></div>
<div>predicted <b>{esc(p['pred'])}</b></div>
<div>score <span class="prob">{p['probability']:.3f}</span></div>
{"" if p["correct"] else f'<div class="muted">true class {p["true_probability"]:.3f}</div>'}
</figcaption></figure>"""


def examples(m: dict, data, preds: list[dict] | None) -> str:
    """One photo of each class, so a reader sees what the classes are: the training photo that
    comes first by content hash (the same one every time), or without the photos at hand a
    validation photo the run got right (else any of that class)."""
    classes = m.get("classes") or []
    if not classes:
        return ""
    picked: dict[str, str] = {}
    if data is not None:
        for s in sorted(data.train, key=lambda s: s.digest):
            picked.setdefault(data.classes[s.label], str(s.path))
    for p in sorted(preds or [], key=lambda p: not p["correct"]):
        picked.setdefault(p["true"], p["path"])
    if not picked:
        return section("One photo per class", '<p class="muted">No photo to show: rebuild this report with '
                                              "<code>--photos PHOTOS</code>.</p>")
    counts = m.get("class_counts") or {}
    cards = []
    for c in classes:
        if c not in picked:
            continue
        n = counts.get(c)
        count = f'<div class="muted">{n["train"]} train, {n["val"]} val</div>' if n else ""
        cards.append(f"""<figure class="card example" title="{esc(picked[c])}">{_thumb(picked[c])}
<figcaption><div><b>{esc(c)}</b></div>{_name(picked[c], m.get("photos"))}{count}</figcaption></figure>""")
    return section("One photo per class", f'<div class="gallery examples">{"".join(cards)}</div>')


def gallery(run_dir, preds: list[dict] | None, note: str, root=None) -> str:
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
        body.append(f'<div class="gallery">{"".join(_card(p, "wrong", root) for p in wrong[:GALLERY_WRONG])}</div>')
        if len(wrong) > GALLERY_WRONG:
            body.append(f'<p class="muted">... and {len(wrong) - GALLERY_WRONG} more wrong.</p>')
    else:
        body.append("<p>No validation photo is misclassified.</p>")
    if close:
        body.append("<h3>Closest calls among the right ones</h3>")
        body.append(f'<div class="gallery">{"".join(_card(p, "close", root) for p in close[:GALLERY_CLOSE])}</div>')
    return section(title, "\n".join(body))


def augmentation(record, m, data, cache_dir=None) -> str:
    """The run's augmentation settings (its RunRecord's, else metrics.json's) and, given its
    training photos (`data`), a preview (kept in `cache_dir` and reused while its inputs stay)."""
    aug = record.augmentation or AugmentationRecord.from_json(m.get("augmentation"))
    if not aug or not aug.pipeline:
        return ""
    desc = ", ".join(f"{k}" for k in aug.pipeline)
    head = (f"<p>Preset <b>{esc(aug.preset or '?')}</b>"
            + (f", {esc(aug.views)} cached augmented view(s) per training photo" if aug.views else "")
            + f"; ops in order: {esc(desc)}.</p>")
    details = f"<details><summary>pipeline settings</summary><pre>{esc(json.dumps(aug.pipeline, indent=1))}</pre></details>"
    if data is None:
        return section("Augmentation", head + '<p class="muted">A preview needs the photos '
                        "(<code>--photos PHOTOS</code>).</p>" + details)
    try:
        png = _augmentation_png(aug.pipeline, data, cache_dir)
    except Exception as e:  # a preview is a nicety: never lose the whole report to it
        log.warning("report: no augmentation preview: %s", e)
        return section("Augmentation", head + f'<p class="warn">No preview: {esc(e)}</p>' + details)
    return section("Augmentation", head + img_tag(png, "augmentation preview", "preview") + details)


def _augmentation_png(pipeline: dict, data, cache_dir=None) -> bytes:
    """The preview sheet (seeded: the same inputs draw the same sheet), kept in the cache under the
    digest of its inputs, so a rerun's report neither decodes the photos nor draws it again."""
    from graft.augment import KERNELS
    from graft.data.folder import spread_over_classes

    picked = spread_over_classes(data.train, PREVIEW_PHOTOS)
    if not picked:
        raise GraftError("no training photo found")
    size = int(next((v.get("size") for v in pipeline.values() if isinstance(v, dict) and v.get("size")), 224))
    if cache_dir is None:
        return _draw_preview(pipeline, picked, size)
    inputs = {"graft": __version__, "kernels": KERNELS, "pipeline": pipeline, "photos": [s.digest for s in picked],
              "size": size, "draws": PREVIEW_DRAWS, "cell": THUMB}
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:32]
    kept = Path(cache_dir) / PREVIEWS / f"{key}.png"
    try:
        png = kept.read_bytes()
        touch(kept)  # a use, for `graft cache prune`
        return png
    except OSError:
        pass
    png = _draw_preview(pipeline, picked, size)
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(kept, png)
    except (OSError, GraftError) as e:  # a read-only cache: drawn again next time
        log.info("could not keep the augmentation preview: %s", e)
    return png


def _draw_preview(pipeline: dict, picked, size: int) -> bytes:
    from graft.augment import preview_grid
    from graft.data.images import read_image

    images = [read_image(s.path, min_short_side=2 * size) for s in picked]
    with tempfile.TemporaryDirectory(prefix="graft-report-") as tmp:
        out = preview_grid(images, pipeline, Path(tmp) / "preview.png", n_draws=PREVIEW_DRAWS, cell=THUMB)
        from PIL import Image

        with Image.open(out) as sheet:  # a 256-colour palette: about half the bytes, same look
            buf = io.BytesIO()
            sheet.convert("RGB").quantize(256).save(buf, format="PNG", optimize=True)
        return buf.getvalue()
