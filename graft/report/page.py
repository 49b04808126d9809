"""The page around a report's sections: escaping, number formats, embedded PNGs, the CSS.

Charts are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend
switch), so building a report never touches a display or another caller's matplotlib state.
"""

from __future__ import annotations

import base64
import html
import io
import math

from graft._version import __version__


def fmt3(x) -> str:
    """How every ratio (accuracy, precision, recall) is shown: 3 decimals, n/a for missing/NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{float(x):.3f}"


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, 22nd, 23rd, 101st."""
    n = int(n)
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def epochs_words(m: dict) -> str:
    """What training did, from metrics.json `m`: the best of the epochs run, or, for the L-BFGS
    head (a full-batch solve), that it ran none rather than "best epoch 0 of 0"."""
    if m.get("epochs_run") != 0:
        return f"best epoch {m.get('best_epoch')} of {m.get('epochs_run', '?')}"
    return "no epochs: L-BFGS, one full-batch solve" if (m.get("head") or {}).get("solver") == "lbfgs" else "no epochs"


def unknown_reasons(unknown: dict) -> str:
    """Why validation photos were called unknown, in counts that add up to `unknown["either"]`:
    the two checks overlap, so novelty's count first, then what confidence refused besides."""
    if unknown.get("novelty") is None:
        return "by confidence"
    return f"{unknown['novelty']} by novelty, {unknown['either'] - unknown['novelty']} more by confidence"


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img_tag(png: bytes, alt: str, cls: str = "", width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} src="{data_uri(png)}" alt="{esc(alt)}"{w}>'


def file_href(path) -> str:
    """A file:// link to a photo (absolute, percent-encoded), for the reader's browser to open."""
    from pathlib import Path

    return esc(Path(path).absolute().as_uri())


def shown_name(path, root=None) -> str:
    """How a photo is named on the page: its path under the photo folder (or the label file's
    folder) when it lies there, else its whole path; never cut short."""
    from pathlib import Path

    path = Path(path)
    if root:
        base = Path(root)
        base = base.parent if base.suffix.lower() in (".csv", ".jsonl") else base
        try:
            return str(path.absolute().relative_to(base.absolute()))
        except ValueError:
            pass
    return str(path)


def figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def png_of(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def section(title: str, body: str) -> str:
    return f"<section><h2>{esc(title)}</h2>\n{body}\n</section>"


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
figure.card .fname { display:block; color:var(--accent); word-break:break-all; margin-bottom:2px; }
figure.card.example { border-top-color:var(--accent); }
figure.card a.photo { display:block; }
figure.card .prob { font-weight:700; color:var(--bad); } figure.card.close .prob { color:var(--warn); }
.nothumb { height:96px; display:flex; align-items:center; justify-content:center; color:var(--muted); }
details pre { font-size:12px; background:#f0f2f5; padding:8px; border-radius:6px; overflow:auto; }
footer { color:var(--muted); font-size:12px; text-align:center; }
table.grid td.path { word-break:break-all; }
.note { background:#fff8e6; border-left:4px solid var(--warn); padding:6px 10px; margin:8px 0; }
"""


def page(title: str, body: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head><body><main>
{body}
<footer>written by graft {esc(__version__)} &middot; self-contained: every picture is embedded in this file
(file names link to the photos on this machine)</footer>
</main></body></html>
"""
