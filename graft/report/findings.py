"""The report's photo-check section: what training left out and why (metrics.json's `skipped`,
in graft check's codes), and the findings of the last `graft check PHOTOS --apply-to RUN`
(RUN/check.json: photos of neither class first, then duplicates, leakage, class balance, likely
mislabelled photos...).

Training runs check's quick error checks on the way and skips what they call an error; the rest
of check (a second look at every pixel, and the mislabel search on features) costs more than a
training run should pay unasked, so it joins the report when the user runs it for this run.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from graft._util.atomic import read_json
from graft.errors import GraftError
from graft.report.page import esc, file_href, section, shown_name
from graft.run.files import CHECK_JSON  # written by `graft check PHOTOS --apply-to RUN`

LEVEL_TITLES = {"error": "errors", "warning": "warnings", "info": "notes"}
FIRST = {"foreign": "photos of neither class"}  # check's codes shown before every level, as its
# text report lists them: graft trains on such a photo without a word


def check_findings(run_dir: Path, m: dict) -> str:
    root = m.get("photos")
    parts = [_skipped(m.get("skipped") or [], root)]
    path = run_dir / CHECK_JSON
    if path.is_file():
        parts.append(_checked(path, m))
    else:
        parts.append('<p class="muted" id="no-check">For the whole check of these photos (duplicates, leakage '
                     "between train and val, class balance, placeholders, likely mislabelled photos): "
                     f"<code>graft check {esc(root or 'PHOTOS')} --apply-to {esc(run_dir)}</code> adds its "
                     "findings to this report.</p>")
    return section("Photo check", "\n".join(parts))


def _skipped(skipped: list[dict], root) -> str:
    if not skipped:
        return '<h3>Skipped files</h3><p class="muted">None: every photo found was used.</p>'
    rows = "".join(f'<tr><td class="path">{_link(s.get("path", "?"), root)}</td>'
                   f'<td><code>{esc(s.get("code", ""))}</code></td><td>{esc(s.get("reason", ""))}</td></tr>'
                   for s in skipped)
    return (f'<h3>Skipped files ({len(skipped)})</h3><p class="muted">Training left these out, each for a reason '
            "<code>graft check</code> calls an error.</p>"
            '<table class="grid skipped"><thead><tr><th>file</th><th>code</th><th>reason</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def _checked(path: Path, m: dict) -> str:
    try:
        report = read_json(path, missing="")
        findings, summary = report["findings"], report["summary"]
    except (GraftError, KeyError, TypeError) as e:
        return f'<p class="warn">Cannot read {esc(path)}: {esc(e)}</p>'
    root = report.get("root")
    when = _dt.datetime.fromtimestamp(path.stat().st_mtime).astimezone().strftime("%Y-%m-%d %H:%M")
    head = (f'<h3>graft check</h3><p id="check-summary">{esc(root)}, checked {esc(when)}'
            f"{'' if report.get('deep', True) else ' (quick)'}: <b>{summary['errors']}</b> error(s), "
            f"<b>{summary['warnings']}</b> warning(s), {summary.get('infos', 0)} note(s).</p>")
    if m.get("photos") and root and Path(root).absolute() != Path(m["photos"]).absolute():
        head += (f'<p class="warn">This check is of {esc(root)}, not of the photos the run was trained on '
                 f"({esc(m['photos'])}).</p>")
    body = [_table(title, [d for d in findings if d["code"] == code], root) for code, title in FIRST.items()
            if any(d["code"] == code for d in findings)]
    for level, title in LEVEL_TITLES.items():
        items = [d for d in findings if d["level"] == level and d["code"] not in FIRST]
        if not items:
            continue
        if level == "info":  # notes repeat (a hundred loose files): one row per kind
            kinds: dict[str, int] = {}
            for d in items:
                kinds[d["code"]] = kinds.get(d["code"], 0) + 1
            rows = "".join(f"<tr><td><code>{esc(c)}</code></td><td>{n} file(s)</td></tr>" for c, n in kinds.items())
            body.append(f'<h4>{title} ({len(items)})</h4><table class="grid findings">{rows}</table>')
            continue
        body.append(_table(title, items, root))
    if not body:
        body.append("<p>Nothing to report.</p>")
    return head + "\n".join(body)


def _table(title: str, items: list[dict], root) -> str:
    rows = "".join(f'<tr class="{d["level"]}"><td class="path">{_link(d["path"], root)}</td>'
                   f'<td><code>{esc(d["code"])}</code></td><td>{esc(_problem(d, root))}</td></tr>'
                   for d in items)
    return (f'<h4>{title} ({len(items)})</h4><table class="grid findings"><thead><tr><th>file</th>'
            f"<th>code</th><th>finding</th></tr></thead><tbody>{rows}</tbody></table>")


def _link(path, root) -> str:
    name = esc(shown_name(path, root))
    return f'<a href="{file_href(path)}"><code>{name}</code></a>' if Path(path).exists() else f"<code>{name}</code>"


def _problem(finding: dict, root) -> str:
    """The message without the file name it starts with (the table shows it)."""
    return finding["message"].removeprefix(shown_name(finding["path"], root) + ": ")
