"""The report's sections that come from metrics.json and model.json alone: the header figures,
training curves, confusion matrix and per-class figures, timings."""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

from graft.backbones.spec import is_joined
from graft.report.page import epochs_words, esc, figure, file_href, fmt3, img_tag, png_of, section
from graft.run.files import METRICS_JSON

# metrics["timings"] keys, in display order, with what each one measures
TIMING_KEYS = {
    "extract_s": "feature extraction (cached features are read, missing ones computed)",
    "train_s": "training",
    "data_wait_s": "of which: waiting for decoded images",
    "step_s": "of which: computing (forward/backward steps)",
    "val_s": "of which: validation passes",
    "total_s": "whole run",
}
MIN_ACCURACY_SPAN = 0.05  # the shortest accuracy axis drawn: 0.05 of the photos, not one photo, fills it
HEAD_TIMING_NOTES = {  # head runs: data_wait_s / step_s are measured during feature extraction
    "data_wait_s": "of extraction: waiting for decoded images",
    "step_s": "of extraction: backbone forward passes",
}


def _created(run_dir: Path, metrics: dict) -> str:
    if metrics.get("created"):
        return str(metrics["created"])
    try:
        ts = (run_dir / METRICS_JSON).stat().st_mtime
    except OSError:
        return "unknown"
    return _dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def header(run_dir: Path, record, m: dict) -> str:
    """The page's header: the validation accuracy and the run's facts. `record`: the run's
    graft.run.record.RunRecord; metrics.json (`m`) has the last word where both say."""
    classes = m.get("classes") or list(record.classes)
    n_val = m.get("n_val")
    acc = m.get("val_accuracy")
    correct = ""
    if isinstance(acc, (int, float)) and not math.isnan(acc) and n_val:
        correct = f"{round(acc * n_val)} of {n_val} validation photos right"
    strategy = m.get("strategy") or record.strategy or "?"
    rows = [
        ("run folder", f"<code>{esc(run_dir.resolve())}</code>"),
        ("classes", " ".join(f'<span class="chip">{esc(c)}</span>' for c in classes) + f" &nbsp;({len(classes)})"),
        ("backbone", _backbone(record, m)),
        ("strategy", f'<b id="strategy">{esc(strategy)}</b>'
                     + (f' <span class="muted">&mdash; {esc(m["strategy_reason"])}</span>' if m.get("strategy_reason") else "")),
        ("images", f"{esc(m.get('n_train', '?'))} train, {esc(n_val if n_val is not None else '?')} val"),
    ]
    cv = m.get("cv_accuracy") or {}
    if cv.get("mean") is not None:
        head = m.get("head") or {}
        rows.append(("cv accuracy", f'<span id="cv-accuracy">{fmt3(cv["mean"])}</span> &plusmn; {fmt3(cv.get("std"))} '
                     f'<span class="muted">&mdash; {esc(head.get("folds", "?"))}-fold cross-validation on the training '
                     f'photos: what chose the head ({esc(head.get("solver", "?"))}'
                     + (f', L2 {head["strength"]:.3g}' if head.get("strength") is not None else "")
                     + (f', {head["epochs"]} epochs' if head.get("epochs") else "")
                     + "); the validation accuracy above is on photos nothing was chosen on</span>"))
    if m.get("backbone_candidates"):
        weighed = (m.get("backbone_weighed") or {}).get("why")
        rows.append(("backbone (auto)" if not weighed else "backbone (weighed)", _backbone_candidates(m["backbone_candidates"])
                     + (f'<br><span class="muted">{esc(weighed)}</span>' if weighed else "")))
    views = m.get("views") or {}
    if views.get("asked") == "auto":
        if "used" in views:
            verdict = (f"{views['k']} views: cv {fmt3(views['cv_with'])} with, {fmt3(views['cv_without'])} without: "
                       + ("<b>used</b>" if views["used"] else "not used"))
        else:
            verdict = f"not weighed: {esc(views.get('reason') or '')}"
        rows.append(("augmented views (auto)", verdict + ' <span class="muted">(chosen by cross-validation on the '
                                                         'training photos)</span>'))
    if m.get("val_balanced_accuracy") is not None:
        rows.append(("balanced accuracy", f"val {fmt3(m['val_balanced_accuracy'])}"
                     + (f", cv {fmt3((m.get('cv_balanced_accuracy') or {}).get('mean'))}"
                        if (m.get("cv_balanced_accuracy") or {}).get("mean") is not None else "")
                     + ' <span class="muted">(mean per-class recall)</span>'))
    if m.get("probe_val_accuracy") is not None and strategy != "head":
        probe = m["probe_val_accuracy"]
        rows.append(("linear probe", f"val accuracy {fmt3(probe)} (new softmax on frozen features, "
                                     "the baseline fine-tuning is measured against)"))
        if isinstance(acc, (int, float)) and acc < probe:
            rows.append(("note", f'<span class="warn" id="probe-better">the frozen head was better: {fmt3(probe)} vs '
                                 f"{fmt3(acc)}</span> <span class=\"muted\">(fine-tuning did not pay off here: "
                                 "<code>--strategy head</code> keeps the frozen head, more epochs or photos may "
                                 "change it)</span>"))
    if m.get("photos"):
        rows.append(("photos", f'<a href="{file_href(m["photos"])}"><code>{esc(m["photos"])}</code></a>'))
    if m.get("best_epoch") is not None:
        rows.append(("epochs", esc(epochs_words(m))
                     + (f", val loss {m['val_loss']:.4f}" if isinstance(m.get("val_loss"), (int, float)) else "")))
    ft = m.get("finetune")
    if ft:
        bits = [f"{k}={ft[k]}" for k in ("train_stages", "new_hidden", "lr", "batch_size", "epochs") if k in ft and ft[k] not in ((), [], None)]
        if ft.get("boundary_cache"):
            bits.append("frozen stages from the boundary cache")
        if ft.get("resumed_from_epoch"):
            bits.append(f"resumed from epoch {ft['resumed_from_epoch']}")
        rows.append(("fine-tuning", esc(", ".join(bits))))
    rows.append(("created", esc(_created(run_dir, m))))
    table = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"""<header>
<div class="title"><h1>graft report <span class="muted">&middot; {esc(run_dir.resolve().name)}</span></h1></div>
<div class="hero">
  <div class="big"><div class="label">validation accuracy <span class="muted">(held out, predicted once)</span></div>
    <div class="value" id="val-accuracy">{fmt3(acc)}</div><div class="muted">{esc(correct)}</div></div>
  <table class="facts">{table}</table>
</div>
</header>"""


def _backbone(record, m: dict) -> str:
    """The backbone's spec, architecture and weights digest (metrics.json's, else the record's)."""
    recorded = record.backbone
    bb = {"spec": recorded.spec, "arch": recorded.arch, "weights_digest": recorded.weights_digest,
          **m.get("backbone", {})}
    digest = str(bb.get("weights_digest") or "")
    return (f"<b>{esc(bb.get('spec', '?'))}</b> &nbsp;<code>{esc(bb.get('arch', '?'))}</code>"
            + (f' &nbsp;weights <code title="SHA-256 {esc(digest)}">{esc(digest[:12])}</code>' if digest else ""))


def _backbone_candidates(candidates: list[dict]) -> str:
    """--backbone auto: each candidate's cross-validated accuracy and cost, the chosen one bold."""
    cells = []
    for r in candidates:
        if r.get("skipped"):
            cells.append(f"{esc(r['backbone'])}: {esc(r['skipped'])}")
        else:
            cells.append(("<b>" if r.get("chosen") else "") + f"{esc(r['backbone'])}: cv {fmt3(r['cv_accuracy'])} "
                         f"&plusmn; {fmt3(r['cv_accuracy_std'])}, extraction {r['extraction_s']:.1f} s"
                         + (" (its parts', nothing more extracted)" if is_joined(r["backbone"]) else "")
                         + ("</b>" if r.get("chosen") else ""))
    return ('<span id="backbone-candidates">' + "<br>".join(cells)
            + '</span> <span class="muted">(chosen by cross-validation on the training photos)</span>')


def selection_curves(m: dict) -> str:
    """A head chosen by cross-validation on the training photos: each L2 strength's cv accuracy
    and the AdamW head's cv loss per epoch (no validation photo is in either)."""
    cands = m.get("candidates") or []
    lb = sorted((c["strength"], c["cv_accuracy"]) for c in cands if c.get("solver") == "lbfgs")
    curve = (m.get("history") or {}).get("cv_loss") or []
    fig = figure(10, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    if lb:
        ax1.semilogx([s for s, _ in lb], [a for _, a in lb], marker="o", ms=3, color="#3b6fb6",
                     label="L-BFGS probe, cv accuracy")
        ax1.set_ylim(*accuracy_axis([a for _, a in lb], *ax1.get_ylim()))
        ax1.legend(fontsize=8)
    ax1.set_xlabel("L2 strength")
    ax1.set_title("cross-validated accuracy (training photos)")
    if curve:
        ax2.plot(range(1, len(curve) + 1), curve, marker="o", ms=3, color="#d9822b", label="AdamW head, cv loss")
        ax2.legend(fontsize=8)
        ax2.xaxis.get_major_locator().set_params(integer=True)
    ax2.set_xlabel("epoch")
    ax2.set_title("cross-validated loss (training photos)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    head = m.get("head") or {}
    note = (f'<p class="muted">chosen: {esc(head.get("solver", "?"))}; every point is {esc(head.get("folds", "?"))}-fold '
            "cross-validation on the training photos, then the winner was refitted on all of them.</p>")
    return section("Training curves", img_tag(png_of(fig), "training and validation curves", "chart") + note)


def accuracy_axis(values: list[float], bottom: float, top: float) -> tuple[float, float]:
    """An accuracy axis at least MIN_ACCURACY_SPAN tall, within [0, 1] plus a margin: matplotlib
    fits the axis to the points, so a curve spanning 0.967-0.971 (one photo) looks like a cliff.
    (bottom, top): the axis as matplotlib drew it, kept when it is tall enough."""
    if top - bottom >= MIN_ACCURACY_SPAN:
        return bottom, top
    mid = (min(values) + max(values)) / 2
    low = min(max(mid - MIN_ACCURACY_SPAN / 2, 0.0), 1.0 - MIN_ACCURACY_SPAN)
    return low - 0.005, low + MIN_ACCURACY_SPAN + 0.005


def curves(m: dict) -> str:
    h = m.get("history") or {}
    tl, vl, va = h.get("train_loss") or [], h.get("val_loss") or [], h.get("val_accuracy") or []
    if not (tl or vl or va):
        if m.get("candidates"):
            return selection_curves(m)
        return section("Training curves", '<p class="muted">metrics.json has no training history.</p>')
    fig = figure(10, 3.6)
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
    files = m.get("log") or {}
    if files:
        links = ", ".join(f'<a href="{esc(name)}"><code>{esc(name)}</code></a>' for name in files.values())
        note += (f'<p class="muted">Every epoch of the head and of fine-tuning, as it ended: {links} in the run '
                 "folder" + (" (<code>tensorboard --logdir</code> it)" if "tensorboard" in files else "") + ".</p>")
    return section("Training curves", img_tag(png_of(fig), "training and validation curves", "chart") + note)


def confusion(m: dict) -> str:
    classes = m.get("classes") or []
    conf = m.get("confusion")
    per_class = m.get("per_class") or {}
    parts = []
    if conf and classes:
        k = len(classes)
        side = min(12.0, max(3.8, 0.55 * k + 2.2))
        fig = figure(side, side * 0.88)
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
        parts.append(f'<div class="cm">{img_tag(png_of(fig), "confusion matrix", "chart")}</div>')
    if per_class:
        rows = []
        for name, v in per_class.items():
            cells = "".join(f'<td class="num" data-class="{esc(name)}" data-metric="{key}">{fmt3(v.get(key))}</td>'
                            for key in ("precision", "recall", "f1"))
            rows.append(f"<tr><th>{esc(name)}</th>{cells}<td class=\"num\">{esc(v.get('support', ''))}</td></tr>")
        parts.append('<table class="grid per-class"><thead><tr><th>class</th><th>precision</th><th>recall</th>'
                     f'<th>F1</th><th>support</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
    if not parts:
        return ""
    return section("Confusion matrix and per-class figures",
                    '<div class="row">' + "".join(parts) + "</div>"
                    + '<p class="muted">Rows are the true class, columns the prediction; precision = right '
                    "among photos predicted as the class, recall = right among photos of the class.</p>")


def timings(m: dict) -> str:
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
                        f'<td class="num">{share}</td><td>{esc(what)}</td></tr>')
            if k == "total_s":
                rest = t[k] - sum(t.get(p) or 0 for p in ("extract_s", "train_s"))
                if rest > 0.005:
                    rows.insert(-1, f'<tr><th class="muted">rest</th><td class="num">{rest:.2f} s</td>'
                                    f'<td class="num">{100 * rest / total:.0f}%</td><td class="muted">{rest_what}</td></tr>')
        parts.append('<table class="grid"><thead><tr><th>timing</th><th>seconds</th><th>of total</th>'
                     f'<th>what</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
        fig = figure(6.4, 0.42 * len(present) + 0.9)
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
        parts.append(img_tag(png_of(fig), "where the time went", "chart small"))
    c = m.get("cache")
    if c:
        hits, misses = int(c.get("hits", 0)), int(c.get("misses", 0))
        n = hits + misses
        rate = f" ({100 * hits / n:.0f}% hits)" if n else ""
        parts.append(f'<p id="cache">Feature cache: <b>{hits}</b> hit(s), <b>{misses}</b> miss(es){rate}, '
                     f"{esc(c.get('forward_batches', '?'))} backbone forward batch(es)"
                     + (f" on {esc(', '.join(c['engines']))}" if c.get("engines") else "")
                     + (f' &mdash; <code>{esc(c["dir"])}</code>' if c.get("dir") else "") + ".</p>")
    if not parts:
        return ""
    return section("Where the time went", '<div class="row">' + "".join(parts[:2]) + "</div>" + "".join(parts[2:]))

