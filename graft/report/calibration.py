"""The report's calibration section, from RUN/calibration.json (`graft calibrate`) and the
validation probabilities training stored: what `graft predict --reject auto` will do.

What the thresholds were fitted on (photos the model was not fitted on: out-of-fold training
photos), the temperature and the thresholds, the share of those in-class photos kept, and, as
the reported figure, how many validation photos each check calls `unknown`; then the trade-off
(what each `--keep` would choose, keep and buy in accuracy; the share of in-class photos each
novelty threshold refuses), a reliability diagram (before and after temperature scaling) and
accuracy against coverage. Without a calibration, one line says how to make one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graft._util.atomic import read_json
from graft._util.digest import sha256_file
from graft.errors import GraftError
from graft.report.page import esc, figure, fmt3, img_tag, ordinal, png_of, section, unknown_reasons
from graft.run.files import CALIBRATION_JSON, MODEL_TENSORS

BINS = 10


def calibration(run_dir: Path, stored: dict | None) -> str:
    """The section; `stored`: graft.run.photos.read_val_predictions's dict, or None."""
    title = "Calibration: what predict --reject auto does"
    path = run_dir / CALIBRATION_JSON
    if not path.is_file():
        return section(title, f'<p class="muted">Not calibrated. <code>graft calibrate {esc(run_dir)} PHOTOS</code> '
                              "fits a temperature (so that 0.9 means right 9 times in 10) and the thresholds "
                              "below which <code>graft predict --reject auto</code> answers <i>unknown</i>.</p>")
    try:
        cal = read_json(path, missing="")
        current = cal.get("model_sha256") == sha256_file(run_dir / MODEL_TENSORS)
    except (GraftError, OSError) as e:
        return section(title, f'<p class="warn">Cannot read {esc(path)}: {esc(e)}</p>')
    if not current:
        return section(title, f'<p class="warn" id="calibration-stale">{esc(path)} was made for an earlier model '
                              f"(the run was retrained since): run <code>graft calibrate {esc(run_dir)} PHOTOS</code> "
                              "again.</p>")
    if "fit" not in cal:  # written by an earlier graft, on the validation photos
        return section(title, f'<table class="facts"><tr><th>temperature</th><td><b id="temperature">'
                              f'{cal["temperature"]:.3f}</b></td></tr><tr><th>confidence threshold</th><td>'
                              f'<b id="threshold">{cal["threshold"]:.4f}</b></td></tr></table>'
                              f'<p class="warn" id="calibration-old">Calibrated by an earlier graft, on the validation '
                              f"photos: run <code>graft calibrate {esc(run_dir)} PHOTOS</code> again to fit it on photos "
                              "the model was not fitted on and see what each threshold costs.</p>")
    fit = cal["fit"]
    where = {"training": "training photos, out-of-fold", "inner": "training photos fine-tuning held out",
             "validation": "validation photos"}[fit["photos"]]
    rows = [("fitted on", f"{esc(fit['how'])} &nbsp;<span class=\"muted\">photos the model was not fitted on</span>"),
            ("temperature", f'<b id="temperature">{cal["temperature"]:.3f}</b> &nbsp;<span class="muted">logits are '
                            f"divided by it; NLL {fit['nll']['before']:.3f} &rarr; {fit['nll']['after']:.3f}</span>")]
    if cal["threshold"] > 0:
        rows.append(("confidence threshold", f'<b id="threshold">{cal["threshold"]:.4f}</b> &nbsp;<span class="muted">'
                     "a top probability below it is <i>unknown</i></span>"))
    else:
        rows.append(("confidence threshold", '<b id="threshold">none</b> &nbsp;<span class="muted">no photo needs '
                     "refusing for low confidence</span>"))
    nov = cal.get("novelty")
    if nov:
        rows.append(("novelty threshold", f"<b>{nov['threshold']:.4f}</b> &nbsp;<span class=\"muted\">cosine distance "
                     f"to the {ordinal(nov['k'])} nearest of {nov['n_reference']} training photos above it is "
                     f"<i>unknown</i> (photos of no class)</span>"))
    rows += _kept_rows(cal, fit, where)
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    body = [f'<table class="facts">{table}</table>']
    body.append(_keep_table(cal))
    png = _charts(cal, stored)
    if png:
        body.append(img_tag(png, "reliability diagram", "chart"))
        body.append('<p class="muted">Left: each validation photo falls in a bin by its top probability; a '
                    "calibrated run's bars sit on the diagonal (right as often as it says). Right: the share of "
                    f"the {where} a confidence threshold alone keeps, and how often the kept ones are right.</p>")
    for w in cal.get("warnings") or []:
        body.append(f'<p class="warn">{esc(w)}</p>')
    return section(title, "\n".join(body))


def _kept_rows(cal: dict, fit: dict, where: str) -> list[tuple[str, str]]:
    """The share kept, both where the thresholds were chosen (out of fold) and on the validation
    photos, new to the fit: the promise is about new photos, and one set of them varies by
    chance, so the validation share comes with the range it is consistent with."""
    reach = "reached" if cal["target_reached"] else f"not reached: --keep {cal['keep']:g} stops the threshold there"
    promise = (f"asked: at least {cal['keep']:g} of new photos, {100 * fit['assurance']:.0f}% of the time, so at "
               f"least {fmt3(fit['keep_with_margin'])} of these" if fit.get("assurance") else f"asked: at least {cal['keep']:g}")
    rows = [("in-class photos kept", f'<b id="fit-kept">{fmt3(fit["kept"])}</b> &nbsp;<span class="muted">of the '
             f"{where} ({promise}), {fmt3(fit['accuracy_kept'])} of them right (target "
             f"{cal['target_accuracy']:g}, {reach})</span>")]
    unknown, kept = cal.get("val_unknown"), cal.get("val_kept")
    if unknown and kept:
        n = unknown["n_val"]
        right = f", {fmt3(kept['accuracy_kept'])} of the kept right" if kept.get("accuracy_kept") is not None else ""
        verdict = f"; {_verdict(kept, cal['keep'], n)}" if kept.get("kept_range") else ""
        rows.append(("validation photos kept", f'<b id="val-kept">{fmt3(kept["kept"])}</b> <span class="muted">'
                     f'({n - unknown["either"]} of {n}, new to the fit{right}{verdict})</span>'))
        rows.append(("validation photos unknown", f'<b id="val-unknown">{unknown["either"]} of {n}</b> '
                     f'<span class="muted">({unknown_reasons(unknown)}): the reported figure, these photos scored '
                     f"once as new ones, never used to choose</span>"))
    elif cal.get("final"):
        rows.append(("validation photos unknown", '<span class="muted">none held out: the model was fitted on them '
                                                  "too (--final, or refitted on train + val); the share kept out of "
                                                  "fold above is the figure for new photos</span>"))
    return rows


def _verdict(kept: dict, keep: float, n: int) -> str:
    """Whether the validation share keeps the promise, and if not, whether chance on n photos
    explains the shortfall (kept_range) or these photos differ from the training ones."""
    low, high = kept["kept_range"]
    if kept["kept"] >= keep:
        words = f"at least --keep {keep:g}"
    elif high >= keep:
        words = f"below --keep {keep:g}, within what chance allows on {n} photos ({fmt3(low)} to {fmt3(high)})"
    else:
        words = (f"below --keep {keep:g}, more than chance on {n} photos explains ({fmt3(low)} to {fmt3(high)}): "
                 "these photos differ from the training photos")
    return f'<span id="val-kept-verdict">{words}</span>'


def _keep_table(cal: dict) -> str:
    """The trade-off: each --keep choice's thresholds, share kept and accuracy of the kept; and
    the share of in-class photos each novelty threshold refuses."""
    rows = cal.get("keep_table") or []
    if not rows:
        return ""
    nov = cal.get("novelty") is not None
    head = ("<tr><th>--keep</th><th>confidence threshold</th>" + ("<th>novelty threshold</th>" if nov else "") +
            "<th>kept</th><th>accuracy of the kept</th></tr>")
    body = []
    for r in rows:
        cells = [f"{r['keep']:g}", f"{r['threshold']:.3f}" if r["threshold"] > 0 else "none"]
        if nov:
            cells.append(f"{r['novelty_threshold']:.3f}")
        cells += [fmt3(r["kept"]), fmt3(r["accuracy"])]
        if r["chosen"]:
            cells = [f"<b>{c}</b>" for c in cells]
        body.append("<tr>" + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>")
    out = [f'<p class="muted">What other choices would do, on the same {cal["fit"]["n"]} photos (yours in bold; '
           f"<code>graft calibrate RUN PHOTOS --keep K</code> picks another):</p>",
           f'<table class="grid" id="keep-table"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>']
    curve = (cal.get("novelty") or {}).get("curve") or []
    if curve:
        cells = "".join(f'<td class="num">{p["threshold"]:.3f}</td>' for p in curve)
        refused = "".join(f'<td class="num">{100 * p["refused"]:.1f}%</td>' for p in curve)
        out.append('<p class="muted">The novelty check alone: the share of these in-class photos each threshold '
                   "refuses (a photo of no class is refused when it is farther than the threshold).</p>"
                   f'<table class="grid" id="novelty-table"><tbody><tr><th>novelty threshold</th>{cells}</tr>'
                   f"<tr><th>in-class refused</th>{refused}</tr></tbody></table>")
    return "\n".join(out)


def reliability(probabilities: np.ndarray, labels: np.ndarray, temperature: float = 1.0, bins: int = BINS):
    """(bin centres, accuracy per bin, mean confidence per bin, photos per bin, ECE) of the
    top class, after dividing the logits (log-probabilities, up to a constant) by `temperature`."""
    logp = np.log(np.clip(probabilities.astype(np.float64), 1e-12, 1.0)) / temperature
    logp -= logp.max(1, keepdims=True)
    p = np.exp(logp)
    p /= p.sum(1, keepdims=True)
    conf, right = p.max(1), p.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    n = np.bincount(which, minlength=bins)
    acc = np.bincount(which, weights=right, minlength=bins) / np.maximum(n, 1)
    mean_conf = np.bincount(which, weights=conf, minlength=bins) / np.maximum(n, 1)
    ece = float(np.sum(n * np.abs(acc - mean_conf)) / max(1, n.sum()))
    return (edges[:-1] + edges[1:]) / 2, acc, mean_conf, n, ece


def _charts(cal: dict, stored: dict | None) -> bytes | None:
    curve = cal.get("curve") or []
    probs = None
    if stored is not None:
        ok = ~np.isnan(stored["probabilities"]).any(1)
        probs, labels = stored["probabilities"][ok], np.asarray(stored["labels"])[ok]
    if not curve and (probs is None or not len(probs)):
        return None
    fig = figure(10, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    if probs is not None and len(probs):
        width = 1.0 / BINS
        for t, color, name, shift in ((1.0, "#d9822b", "as trained", -width / 4),
                                      (float(cal["temperature"]), "#3b6fb6", f"T = {cal['temperature']:.2f}", width / 4)):
            centres, acc, _, n, ece = reliability(probs, labels, t)
            has = n > 0
            ax1.bar(centres[has] + shift, acc[has], width=width / 2, color=color, alpha=0.85,
                    label=f"{name} (ECE {ece:.3f})")
        ax1.plot([0, 1], [0, 1], ls="--", color="#888", lw=1)
        ax1.set_xlim(0, 1)
        ax1.set_ylim(0, 1.02)
        ax1.set_xlabel("top probability (confidence)")
        ax1.set_ylabel("accuracy")
        ax1.legend(fontsize=8, loc="upper left")
    else:
        ax1.text(0.5, 0.5, "no stored validation predictions", ha="center", va="center", color="#888")
        ax1.set_axis_off()
    ax1.set_title("reliability diagram (validation photos)")
    if curve:
        ax2.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], marker="o", ms=2, color="#2e8b57")
        point = next((p for p in curve if p["threshold"] <= cal["threshold"]), curve[-1])  # highest first
        at = (point["coverage"], point["accuracy"])
        ax2.scatter([at[0]], [at[1]], color="#c0392b", zorder=3, label=f"threshold {cal['threshold']:.3f}")
        ax2.axhline(cal["target_accuracy"], color="#888", ls=":", lw=1, label=f"target {cal['target_accuracy']:g}")
        ax2.set_xlabel({"training": "share of the training photos kept (out-of-fold)",
                        "inner": "share of fine-tuning's held-out photos kept"}.get(
                            (cal.get("fit") or {}).get("photos"), "share of the validation photos kept"))
        ax2.set_ylabel("accuracy of the kept photos")
        ax2.set_xlim(0, 1.02)
        ax2.legend(fontsize=8, loc="lower left")
    ax2.set_title("accuracy against coverage")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return png_of(fig)

