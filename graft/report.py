"""RUN/report.html: one self-contained page about a training run, to look at rather than read.

Built from RUN/metrics.json and RUN/model.json (and, given the photos, from the validation photos
themselves): the header figures, training curves, the confusion matrix, per-class precision and
recall, the most confidently wrong validation photos, the augmentation preview, where the time
went, and the skipped files. Every picture is an embedded PNG (data: URI), the CSS is inline and
the page has no script, so the file can be mailed, archived or opened offline as it is.

    graft report RUN [--photos PHOTOS] [--open]
    graft.report.write_report("runs/cats", photos="PHOTOS")

Charts are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend
switch), so building a report never touches a display or another caller's matplotlib state.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import logging
import math
import tempfile
from pathlib import Path

from ._atomic import atomic_path
from .errors import GraftError

log = logging.getLogger("graft")

THUMB = 128  # pixels: longest side of a gallery thumbnail
GALLERY_WRONG = 12  # most confidently wrong validation photos shown
GALLERY_CLOSE = 6  # correct but least confident validation photos shown
PREVIEW_PHOTOS = 3  # photos in the augmentation preview
PREVIEW_DRAWS = 5

# metrics["timings"] keys, in display order, with what each one measures
TIMING_KEYS = {
    "extract_s": "feature extraction (cached features are read, missing ones computed)",
    "train_s": "training",
    "data_wait_s": "of which: waiting for decoded images",
    "step_s": "of which: computing (forward/backward steps)",
    "val_s": "of which: validation passes",
    "total_s": "whole run",
}
HEAD_TIMING_NOTES = {  # head runs: data_wait_s / step_s are measured during feature extraction
    "data_wait_s": "of extraction: waiting for decoded images",
    "step_s": "of extraction: backbone forward passes",
}


# --- per-image predictions on the validation split --------------------------------------------

def val_predictions(run_dir, photos, *, cache_dir=None, weights=None, batch_size: int = 32,
                    workers: int | None = None) -> list[dict]:
    """Each validation photo of the run's split of `photos`, with the run's prediction for it.

    The split is recomputed as training drew it: `scan_photos(photos, val_split=<model.json
    training.val_split>)` (content-hash split, or PHOTOS/val). Each item is {"path", "true",
    "pred", "probability" (of the predicted class), "true_probability", "correct"}; files that
    cannot be read are left out. Frozen-backbone runs score the cached features (no forward pass
    when training filled the cache: `cache_dir` defaults to the run's own cache); other runs run
    the stored network on the run's evaluation preprocessing.
    """
    from .data import scan_photos
    from .model import read_run_meta

    meta = read_run_meta(run_dir)
    data = scan_photos(photos, val_split=_val_split(meta))
    return _val_predictions(run_dir, meta, data, cache_dir=cache_dir, weights=weights,
                            batch_size=batch_size, workers=workers)


def _val_split(meta: dict) -> float:
    return float((meta.get("training") or {}).get("val_split", 0.2))


def _val_predictions(run_dir, meta, data, *, cache_dir, weights, batch_size, workers) -> list[dict]:
    import numpy as np
    import torch

    if list(data.classes) != list(meta["classes"]):
        raise GraftError(f"the photos' classes ({', '.join(data.classes)}) are not the run's "
                         f"({', '.join(meta['classes'])}): pass the photos the run was trained on")
    samples = list(data.val)
    if not samples:
        return []
    from .model import run_features

    feats, ok, head, _ = run_features(run_dir, samples, cache_dir=_cache_root(run_dir, cache_dir), weights=weights,
                                      batch_size=batch_size, workers=workers)
    probs = np.full((len(samples), len(meta["classes"])), np.nan, dtype=np.float32)
    if ok.any():
        with torch.inference_mode():
            probs[ok] = head(torch.from_numpy(feats[ok])).softmax(1).numpy()
    classes = meta["classes"]
    out = []
    for i, s in enumerate(samples):
        if not ok[i]:
            continue
        pred = int(np.argmax(probs[i]))
        out.append({"path": str(s.path), "true": classes[s.label], "pred": classes[pred],
                    "probability": float(probs[i, pred]), "true_probability": float(probs[i, s.label]),
                    "correct": pred == s.label})
    return out


def _cache_root(run_dir, cache_dir) -> Path:
    """The feature cache training used: given, else the parent of metrics' cache dir, else default."""
    from .cache import default_cache_dir

    if cache_dir:
        return Path(cache_dir).expanduser()
    recorded = (_read_json(Path(run_dir) / "metrics.json", required=False).get("cache") or {}).get("dir")
    if recorded and Path(recorded).parent.is_dir():
        return Path(recorded).parent
    return default_cache_dir()


# --- the report -------------------------------------------------------------------------------

def write_report(run_dir, photos=None, *, cache_dir=None, weights=None, workers: int | None = None) -> Path:
    """Build RUN/report.html (atomically) and return its path.

    With `photos` (the folder the run was trained on) the report also shows the most confidently
    wrong validation photos and, for runs trained with augmentation, a preview of it.
    """
    from .model import read_run_meta

    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir)
    metrics = _read_json(run_dir / "metrics.json", required=True)
    sections = [_header(run_dir, meta, metrics), _curves_section(metrics), _confusion_section(metrics)]
    data = None
    if photos is not None:
        from .data import scan_photos

        data = scan_photos(photos, val_split=_val_split(meta), cache_dir=_cache_root(run_dir, cache_dir))
    sections.append(_gallery_section(run_dir, meta, metrics, data, cache_dir=cache_dir, weights=weights,
                                     workers=workers))
    sections.append(_augmentation_section(meta, metrics, data))
    sections.append(_timings_section(metrics))
    sections.append(_skipped_section(metrics))
    page = _page(f"graft report: {run_dir.resolve().name}", "\n".join(s for s in sections if s))
    out = run_dir / "report.html"
    with atomic_path(out) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return out


def _read_json(path: Path, *, required: bool) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if required:
            raise GraftError(f"{path} not found: the run did not finish; train it with `graft train`") from None
        return {}
    except (OSError, ValueError) as e:
        if required:
            raise GraftError(f"cannot read {path}: {e}") from None
        return {}


def fmt3(x) -> str:
    """How every ratio (accuracy, precision, recall) is shown: 3 decimals, n/a for missing/NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{float(x):.3f}"


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _created(run_dir: Path, metrics: dict) -> str:
    if metrics.get("created"):
        return str(metrics["created"])
    try:
        ts = (run_dir / "metrics.json").stat().st_mtime
    except OSError:
        return "unknown"
    return _dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _header(run_dir: Path, meta: dict, m: dict) -> str:
    bb = {**meta.get("backbone", {}), **m.get("backbone", {})}
    digest = str(bb.get("weights_digest") or "")
    classes = m.get("classes") or meta.get("classes") or []
    n_val = m.get("n_val")
    acc = m.get("val_accuracy")
    correct = ""
    if isinstance(acc, (int, float)) and not math.isnan(acc) and n_val:
        correct = f"{round(acc * n_val)} of {n_val} validation photos right"
    strategy = m.get("strategy") or meta.get("strategy") or "?"
    rows = [
        ("run folder", f"<code>{_e(run_dir.resolve())}</code>"),
        ("classes", " ".join(f'<span class="chip">{_e(c)}</span>' for c in classes) + f" &nbsp;({len(classes)})"),
        ("backbone", f"<b>{_e(bb.get('spec', '?'))}</b> &nbsp;<code>{_e(bb.get('arch', '?'))}</code>"
                     + (f' &nbsp;weights <code title="SHA-256 {_e(digest)}">{_e(digest[:12])}</code>' if digest else "")),
        ("strategy", f'<b id="strategy">{_e(strategy)}</b>'
                     + (f' <span class="muted">&mdash; {_e(m["strategy_reason"])}</span>' if m.get("strategy_reason") else "")),
        ("images", f"{_e(m.get('n_train', '?'))} train, {_e(n_val if n_val is not None else '?')} val"),
    ]
    if m.get("probe_val_accuracy") is not None and strategy != "head":
        rows.append(("linear probe", f"val accuracy {fmt3(m['probe_val_accuracy'])} (new softmax on frozen features, "
                                     "the baseline fine-tuning is measured against)"))
    if m.get("best_epoch") is not None:
        rows.append(("epochs", f"best epoch {_e(m['best_epoch'])} of {_e(m.get('epochs_run', '?'))}"
                     + (f", val loss {m['val_loss']:.4f}" if isinstance(m.get("val_loss"), (int, float)) else "")))
    ft = m.get("finetune")
    if ft:
        bits = [f"{k}={ft[k]}" for k in ("train_stages", "new_hidden", "lr", "batch_size", "epochs") if k in ft and ft[k] not in ((), [], None)]
        if ft.get("boundary_cache"):
            bits.append("frozen stages from the boundary cache")
        if ft.get("resumed_from_epoch"):
            bits.append(f"resumed from epoch {ft['resumed_from_epoch']}")
        rows.append(("fine-tuning", _e(", ".join(bits))))
    rows.append(("created", _e(_created(run_dir, m))))
    table = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"""<header>
<div class="title"><h1>graft report <span class="muted">&middot; {_e(run_dir.resolve().name)}</span></h1></div>
<div class="hero">
  <div class="big"><div class="label">validation accuracy</div>
    <div class="value" id="val-accuracy">{fmt3(acc)}</div><div class="muted">{_e(correct)}</div></div>
  <table class="facts">{table}</table>
</div>
</header>"""


# --- pictures ---------------------------------------------------------------------------------

def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, cls: str = "", width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} src="{_png_data_uri(png)}" alt="{_e(alt)}"{w}>'


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def _curves_section(m: dict) -> str:
    h = m.get("history") or {}
    tl, vl, va = h.get("train_loss") or [], h.get("val_loss") or [], h.get("val_accuracy") or []
    if not (tl or vl or va):
        return _section("Training curves", '<p class="muted">metrics.json has no training history.</p>')
    fig = _figure(10, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    if tl:
        ax1.plot(range(1, len(tl) + 1), tl, marker="o", ms=3, label="train loss", color="#3b6fb6")
    if vl:
        ax1.plot(range(1, len(vl) + 1), vl, marker="o", ms=3, label="val loss", color="#d9822b")
    ax1.set_title("loss")
    if va:
        ax2.plot(range(1, len(va) + 1), va, marker="o", ms=3, color="#2e8b57", label="val accuracy")
        lo = min(v for v in va if v is not None and not math.isnan(v)) if any(
            v is not None and not math.isnan(v) for v in va) else 0.0
        ax2.set_ylim(max(0.0, min(lo, 1.0) - 0.05), 1.02)
    ax2.set_title("validation accuracy")
    best = m.get("best_epoch")
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if best:
            ax.axvline(best, color="#888", ls="--", lw=1, label=f"best epoch ({best})")
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    note = ""
    epoch_s = h.get("epoch_s") or []
    if epoch_s:
        note = (f'<p class="muted">{len(epoch_s)} epochs, {sum(epoch_s) / len(epoch_s):.2f} s each on average '
                f"(first {epoch_s[0]:.2f} s).</p>")
    return _section("Training curves", _img(_fig_png(fig), "training and validation curves", "chart") + note)


def _confusion_section(m: dict) -> str:
    classes = m.get("classes") or []
    conf = m.get("confusion")
    per_class = m.get("per_class") or {}
    parts = []
    if conf and classes:
        k = len(classes)
        side = min(12.0, max(3.8, 0.55 * k + 2.2))
        fig = _figure(side, side * 0.88)
        ax = fig.subplots()
        import numpy as np

        c = np.asarray(conf, dtype=float)
        im = ax.imshow(c, cmap="Blues", vmin=0)
        from matplotlib.ticker import MaxNLocator

        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, ticks=MaxNLocator(integer=True))
        if k <= 40:
            thresh = c.max() / 2 if c.size else 0
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, str(int(c[i, j])), ha="center", va="center", fontsize=9 if k <= 15 else 6,
                            color="white" if c[i, j] > thresh else "#222")
        ax.set_xticks(range(k), labels=classes, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center",
                      fontsize=8)
        ax.set_yticks(range(k), labels=classes, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        fig.tight_layout()
        parts.append(f'<div class="cm">{_img(_fig_png(fig), "confusion matrix", "chart")}</div>')
    if per_class:
        rows = []
        for name, v in per_class.items():
            cells = "".join(f'<td class="num" data-class="{_e(name)}" data-metric="{key}">{fmt3(v.get(key))}</td>'
                            for key in ("precision", "recall", "f1"))
            rows.append(f"<tr><th>{_e(name)}</th>{cells}<td class=\"num\">{_e(v.get('support', ''))}</td></tr>")
        parts.append('<table class="grid per-class"><thead><tr><th>class</th><th>precision</th><th>recall</th>'
                     f'<th>F1</th><th>support</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
    if not parts:
        return ""
    return _section("Confusion matrix and per-class figures",
                    '<div class="row">' + "".join(parts) + "</div>"
                    + '<p class="muted">Rows are the true class, columns the prediction; precision = right '
                    "among photos predicted as the class, recall = right among photos of the class.</p>")


def _thumb_png(path) -> bytes:
    from PIL import ImageOps

    from .data.images import read_image

    img = ImageOps.contain(read_image(path, min_short_side=THUMB), (THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _card(p: dict, kind: str) -> str:
    try:
        thumb = _img(_thumb_png(p["path"]), Path(p["path"]).name)
    except Exception as e:  # the file changed since: show the caption anyway
        thumb = f'<div class="nothumb">{_e(type(e).__name__)}</div>'
    name = Path(p["path"]).name
    return f"""<figure class="card {kind}" title="{_e(p['path'])}">{thumb}
<figcaption><div class="fname">{_e(name)}</div>
<div>true <b>{_e(p['true'])}</b></div>
<div>predicted <b>{_e(p['pred'])}</b></div>
<div>score <span class="prob">{p['probability']:.3f}</span></div>
{"" if p["correct"] else f'<div class="muted">true class {p["true_probability"]:.3f}</div>'}
</figcaption></figure>"""


def _gallery_section(run_dir, meta, m, data, *, cache_dir, weights, workers) -> str:
    title = "Most confidently wrong validation photos"
    if data is None:
        return _section(title, '<p class="muted">The gallery needs the photos: rebuild this report with '
                               f"<code>graft report {_e(run_dir)} --photos PHOTOS</code>.</p>")
    try:
        preds = _val_predictions(run_dir, meta, data, cache_dir=cache_dir, weights=weights, batch_size=32,
                                 workers=workers)
    except GraftError as e:
        return _section(title, f'<p class="warn">No gallery: {_e(e)}</p>')
    if not preds:
        return _section(title, '<p class="muted">No validation photo to show.</p>')
    wrong = sorted((p for p in preds if not p["correct"]), key=lambda p: -p["probability"])
    close = sorted((p for p in preds if p["correct"]), key=lambda p: p["true_probability"])
    body = []
    n_ok = sum(p["correct"] for p in preds)
    note = f"Recomputed on {len(preds)} validation photos of {_e(data.root)}: {n_ok} right."
    if len(preds) != m.get("n_val") or (m.get("n_val") and fmt3(n_ok / len(preds)) != fmt3(m.get("val_accuracy"))):
        note += (' <span class="warn">This differs from metrics.json (photos changed since training, or '
                 "another split): the gallery shows the photos as they are now.</span>")
    body.append(f'<p class="muted">{note}</p>')
    if wrong:
        body.append(f'<div class="gallery">{"".join(_card(p, "wrong") for p in wrong[:GALLERY_WRONG])}</div>')
        if len(wrong) > GALLERY_WRONG:
            body.append(f'<p class="muted">... and {len(wrong) - GALLERY_WRONG} more wrong.</p>')
    else:
        body.append("<p>No validation photo is misclassified.</p>")
    if close:
        body.append("<h3>Closest calls among the right ones</h3>")
        body.append(f'<div class="gallery">{"".join(_card(p, "close") for p in close[:GALLERY_CLOSE])}</div>')
    return _section(title, "\n".join(body))


def _augmentation_section(meta, m, data) -> str:
    aug = meta.get("augmentation") or m.get("augmentation")
    if not aug or not aug.get("pipeline"):
        return ""
    desc = ", ".join(f"{k}" for k in aug["pipeline"])
    head = (f"<p>Preset <b>{_e(aug.get('preset', '?'))}</b>"
            + (f", {_e(aug['views'])} cached augmented view(s) per training photo" if aug.get("views") else "")
            + f"; ops in order: {_e(desc)}.</p>")
    details = f"<details><summary>pipeline settings</summary><pre>{_e(json.dumps(aug['pipeline'], indent=1))}</pre></details>"
    if data is None:
        return _section("Augmentation", head + '<p class="muted">A preview needs the photos '
                        "(<code>--photos PHOTOS</code>).</p>" + details)
    try:
        png = _augmentation_png(aug["pipeline"], data)
    except Exception as e:  # a preview is a nicety: never lose the whole report to it
        log.warning("report: no augmentation preview: %s", e)
        return _section("Augmentation", head + f'<p class="warn">No preview: {_e(e)}</p>' + details)
    return _section("Augmentation", head + _img(png, "augmentation preview", "preview") + details)


def _augmentation_png(pipeline: dict, data) -> bytes:
    from .augment import preview_grid
    from .data.images import read_image

    picked, seen = [], set()
    for s in sorted(data.train, key=lambda s: s.digest):  # one per class first, stable choice
        if s.label not in seen or len(seen) == len(data.classes):
            picked.append(s)
            seen.add(s.label)
        if len(picked) == PREVIEW_PHOTOS:
            break
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


def _timings_section(m: dict) -> str:
    t = m.get("timings") or {}
    present = [k for k in TIMING_KEYS if isinstance(t.get(k), (int, float))]
    parts = []
    head_run = m.get("strategy") == "head" and not m.get("finetune")
    rest_what = ("scanning photos, setting up, saving" if head_run else
                 "scanning photos, the linear probe, building the network, final evaluation, saving")
    if present:
        total = t.get("total_s") or 0
        rows = []
        for k in present:
            what = (HEAD_TIMING_NOTES.get(k) if head_run else None) or TIMING_KEYS[k]
            share = f"{100 * t[k] / total:.0f}%" if total and k != "total_s" else ""
            rows.append(f'<tr><th><code>{k}</code></th><td class="num">{t[k]:.2f} s</td>'
                        f'<td class="num">{share}</td><td>{_e(what)}</td></tr>')
            if k == "total_s":
                rest = t[k] - sum(t.get(p) or 0 for p in ("extract_s", "train_s"))
                if rest > 0.005:
                    rows.insert(-1, f'<tr><th class="muted">rest</th><td class="num">{rest:.2f} s</td>'
                                    f'<td class="num">{100 * rest / total:.0f}%</td><td class="muted">{rest_what}</td></tr>')
        parts.append('<table class="grid"><thead><tr><th>timing</th><th>seconds</th><th>of total</th>'
                     f'<th>what</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
        fig = _figure(6.4, 0.42 * len(present) + 0.9)
        ax = fig.subplots()
        labels = list(reversed(present))
        colors = ["#555" if k == "total_s" else "#9bb7dd" if k in ("data_wait_s", "step_s", "val_s") else "#3b6fb6"
                  for k in labels]
        bars = ax.barh(labels, [t[k] for k in labels], color=colors)
        ax.bar_label(bars, labels=[f"{t[k]:.2f} s" for k in labels], padding=3, fontsize=8)
        ax.set_xlabel("seconds")
        ax.set_xlim(0, max(t[k] for k in labels) * 1.18 or 1)
        ax.spines[["top", "right"]].set_visible(False)
        fig.tight_layout()
        parts.append(_img(_fig_png(fig), "where the time went", "chart small"))
    c = m.get("cache")
    if c:
        hits, misses = int(c.get("hits", 0)), int(c.get("misses", 0))
        n = hits + misses
        rate = f" ({100 * hits / n:.0f}% hits)" if n else ""
        parts.append(f'<p id="cache">Feature cache: <b>{hits}</b> hit(s), <b>{misses}</b> miss(es){rate}, '
                     f"{_e(c.get('forward_batches', '?'))} backbone forward batch(es)"
                     + (f' &mdash; <code>{_e(c["dir"])}</code>' if c.get("dir") else "") + ".</p>")
    if not parts:
        return ""
    return _section("Where the time went", '<div class="row">' + "".join(parts[:2]) + "</div>" + "".join(parts[2:]))


def _skipped_section(m: dict) -> str:
    skipped = m.get("skipped") or []
    if not skipped:
        return _section("Skipped files", '<p class="muted">None: every photo found was used.</p>')
    rows = "".join(f"<tr><td><code>{_e(s.get('path', '?'))}</code></td><td>{_e(s.get('reason', ''))}</td></tr>"
                   for s in skipped)
    return _section(f"Skipped files ({len(skipped)})",
                    f'<table class="grid skipped"><thead><tr><th>file</th><th>reason</th></tr></thead>'
                    f"<tbody>{rows}</tbody></table>")


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>\n{body}\n</section>"


CSS = """
:root { --fg:#1d2330; --muted:#6b7280; --line:#e4e7ec; --bg:#f6f7f9; --card:#fff; --accent:#3b6fb6;
        --bad:#c0392b; --warn:#b7791f; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
main { max-width:1120px; margin:0 auto; padding:24px 20px 48px; }
h1 { font-size:24px; margin:0 0 14px; } h2 { font-size:18px; margin:0 0 12px; }
h3 { font-size:15px; margin:18px 0 8px; }
header, section { background:var(--card); border:1px solid var(--line); border-radius:10px;
                  padding:18px 22px; margin-bottom:18px; }
.muted { color:var(--muted); } .warn { color:var(--warn); }
code { font:13px/1.3 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; background:#f0f2f5;
       padding:1px 4px; border-radius:4px; word-break:break-all; }
.hero { display:flex; gap:28px; align-items:flex-start; flex-wrap:wrap; }
.big { min-width:190px; padding:14px 18px; border-radius:10px; background:#eef3fb; text-align:center; }
.big .label { font-size:12px; text-transform:uppercase; letter-spacing:.06em; color:var(--muted); }
.big .value { font-size:44px; font-weight:700; color:var(--accent); line-height:1.15; }
table.facts { border-collapse:collapse; flex:1; min-width:420px; }
table.facts th { text-align:left; font-weight:600; color:var(--muted); padding:3px 14px 3px 0;
                 vertical-align:top; white-space:nowrap; }
table.facts td { padding:3px 0; }
.chip { display:inline-block; background:#eef0f4; border-radius:10px; padding:0 8px; margin:1px 2px;
        font-size:13px; }
.row { display:flex; gap:24px; flex-wrap:wrap; align-items:flex-start; }
img.chart { max-width:100%; height:auto; } img.chart.small { max-width:560px; }
img.preview { max-width:100%; height:auto; border-radius:6px; }
.cm img { max-width:520px; }
table.grid { border-collapse:collapse; font-size:14px; }
table.grid th, table.grid td { border-bottom:1px solid var(--line); padding:5px 12px; text-align:left; }
table.grid thead th { color:var(--muted); font-weight:600; border-bottom:2px solid var(--line); }
table.grid td.num { text-align:right; font-variant-numeric:tabular-nums; }
.gallery { display:flex; flex-wrap:wrap; gap:12px; }
figure.card { margin:0; width:160px; background:#fafbfc; border:1px solid var(--line);
              border-top:4px solid var(--bad); border-radius:8px; padding:8px; font-size:12.5px; }
figure.card.close { border-top-color:var(--warn); }
figure.card img { display:block; margin:0 auto 6px; max-width:128px; max-height:128px; border-radius:4px; }
figure.card .fname { color:var(--muted); overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
figure.card .prob { font-weight:700; color:var(--bad); } figure.card.close .prob { color:var(--warn); }
.nothumb { height:96px; display:flex; align-items:center; justify-content:center; color:var(--muted); }
details pre { font-size:12px; background:#f0f2f5; padding:8px; border-radius:6px; overflow:auto; }
footer { color:var(--muted); font-size:12px; text-align:center; }
"""


def _page(title: str, body: str) -> str:
    from . import __version__

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style>
</head><body><main>
{body}
<footer>written by graft {_e(__version__)} &middot; self-contained: every picture is embedded in this file</footer>
</main></body></html>
"""


# --- command line -----------------------------------------------------------------------------

def add_cli(subparsers):
    """Register `graft report RUN [--photos PHOTOS] [--open]` on an argparse sub-parser set."""
    p = subparsers.add_parser(
        "report", help="write RUN/report.html: curves, confusion matrix, worst photos, timings",
        description="Rebuild RUN/report.html, one self-contained page (pictures embedded) about a run. "
        "With --photos (the folder it was trained on) it also shows the most confidently wrong "
        "validation photos and the augmentation preview.")
    p.add_argument("run", metavar="RUN", help="run folder written by graft train")
    p.add_argument("--photos", metavar="PHOTOS", default=None, help="the photo folder the run was trained on")
    p.add_argument("--cache-dir", metavar="DIR", help="feature cache (default: the one the run used)")
    p.add_argument("--weights", metavar="FILE", help="backbone weights file, if not where training found it")
    p.add_argument("--open", action="store_true", help="open the report in a web browser")
    p.set_defaults(handler=cmd_report)
    return p


def cmd_report(args) -> int:
    out = write_report(args.run, photos=args.photos, cache_dir=getattr(args, "cache_dir", None),
                       weights=getattr(args, "weights", None))
    print(out)
    if getattr(args, "open", False):
        import webbrowser

        webbrowser.open(out.resolve().as_uri())
    return 0
