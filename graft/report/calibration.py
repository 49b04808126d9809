"""The report's calibration section, from RUN/calibration.json (`graft calibrate`) and the
validation probabilities training stored: what `graft predict --reject auto` will do.

A reliability diagram (how often the top class is right against how sure the run says it is,
before and after temperature scaling), the accuracy a confidence threshold buys against the share
of photos it keeps, the temperature and the thresholds, and how many validation photos each check
would call `unknown`. Without a calibration, one line says how to make one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._atomic import read_json
from .._digest import sha256_file
from ..errors import GraftError
from .page import esc, figure, fmt3, img_tag, ordinal, png_of, section

BINS = 10


def calibration(run_dir: Path, stored: dict | None) -> str:
    """The section; `stored`: graft.run.read_val_predictions's dict, or None."""
    from ..calibrate import CALIBRATION_JSON

    title = "Calibration: what predict --reject auto does"
    path = run_dir / CALIBRATION_JSON
    if not path.is_file():
        return section(title, f'<p class="muted">Not calibrated. <code>graft calibrate {esc(run_dir)} PHOTOS</code> '
                              "fits a temperature (so that 0.9 means right 9 times in 10) and the thresholds "
                              "below which <code>graft predict --reject auto</code> answers <i>unknown</i>.</p>")
    try:
        cal = read_json(path, missing="")
        current = cal.get("model_sha256") == sha256_file(run_dir / "model.safetensors")
    except (GraftError, OSError) as e:
        return section(title, f'<p class="warn">Cannot read {esc(path)}: {esc(e)}</p>')
    if not current:
        return section(title, f'<p class="warn" id="calibration-stale">{esc(path)} was made for an earlier model '
                              f"(the run was retrained since): run <code>graft calibrate {esc(run_dir)} PHOTOS</code> "
                              "again.</p>")
    rows = [("temperature", f'<b id="temperature">{cal["temperature"]:.3f}</b> &nbsp;<span class="muted">logits are '
                            f"divided by it; validation NLL {cal['val_nll']['before']:.3f} &rarr; "
                            f"{cal['val_nll']['after']:.3f}</span>")]
    if cal["threshold"] > 0:
        rows.append(("confidence threshold", f'<b id="threshold">{cal["threshold"]:.4f}</b> &nbsp;<span class="muted">'
                     f"a top probability below it is <i>unknown</i>; above it the validation photos are "
                     f"{fmt3(cal['val_accuracy_at_threshold'])} right (target {cal['target_accuracy']:g}"
                     f"{'' if cal['target_reached'] else ', not reached'})</span>"))
    else:
        rows.append(("confidence threshold", '<b id="threshold">none</b> &nbsp;<span class="muted">the validation '
                     f"photos reach the target accuracy {cal['target_accuracy']:g} at every confidence</span>"))
    nov = cal.get("novelty")
    if nov:
        rows.append(("novelty threshold", f"<b>{nov['threshold']:.4f}</b> &nbsp;<span class=\"muted\">cosine distance "
                     f"to the {ordinal(nov['k'])} nearest of {nov['n_reference']} training and validation photos "
                     f"above it is <i>unknown</i> (photos of no class)</span>"))
    unknown = cal.get("val_unknown")
    if unknown:
        n = unknown["n_val"]
        bits = [f"{unknown['confidence']} by confidence"]
        if unknown.get("novelty") is not None:
            bits.append(f"{unknown['novelty']} by novelty")
        rows.append(("validation photos unknown", f'<b id="val-unknown">{unknown["either"]} of {n}</b> '
                     f'<span class="muted">({", ".join(bits)})</span>'))
    else:  # calibrated before graft counted them: the confidence check is in the curve
        kept = round(cal["coverage_at_threshold"] * cal["n_val"])
        rows.append(("validation photos unknown", f'<b id="val-unknown">{cal["n_val"] - kept} of {cal["n_val"]}</b> '
                     '<span class="muted">(by confidence; calibrate again for the novelty check\'s count)</span>'))
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    body = [f'<table class="facts">{table}</table>']
    png = _charts(cal, stored)
    if png:
        body.append(img_tag(png, "reliability diagram", "chart"))
        body.append('<p class="muted">Left: each validation photo falls in a bin by its top probability; a '
                    "calibrated run's bars sit on the diagonal (right as often as it says). Right: the share of "
                    "validation photos a confidence threshold keeps, and how often the kept ones are right.</p>")
    for w in cal.get("warnings") or []:
        body.append(f'<p class="warn">{esc(w)}</p>')
    return section(title, "\n".join(body))


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
        at = (cal["coverage_at_threshold"], cal["val_accuracy_at_threshold"])
        ax2.scatter([at[0]], [at[1]], color="#c0392b", zorder=3, label=f"threshold {cal['threshold']:.3f}")
        ax2.axhline(cal["target_accuracy"], color="#888", ls=":", lw=1, label=f"target {cal['target_accuracy']:g}")
        ax2.set_xlabel("share of validation photos kept")
        ax2.set_ylabel("accuracy of the kept photos")
        ax2.set_xlim(0, 1.02)
        ax2.legend(fontsize=8, loc="lower left")
    ax2.set_title("accuracy against coverage")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return png_of(fig)

