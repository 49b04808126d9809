"""RUN/report.html: self-contained (every picture an embedded PNG that decodes), its figures equal
metrics.json's, and a real headless browser renders every picture.

One tiny head run (2 classes x 8 generated photos, one cached augmented view so the report has an
augmentation preview) is trained once for the module. The report's gallery reads the validation
predictions training stored (no photo scanned, no forward pass); recomputing them for runs that
did not store them reads the features training cached, again with no forward pass.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import shutil
import types
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

import graft
from browser import DESKTOP, HALF_SCREEN, DevTools, assert_seen, needs_chromium
from conftest import count_backbone_forwards, isolated_env, make_photo_folder, make_split_folder
from graft.cli.report import add_parser
from graft.report import fmt3, stored_val_predictions, val_predictions, write_report

DATA_PNG = "data:image/png;base64,"


class ReportParser(HTMLParser):
    """The parts of a report the tests look at: images, the accuracy, per-class cells, cards."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.imgs: list[dict] = []
        self.cells: dict[tuple[str, str], str] = {}
        self.texts: dict[str, str] = {}  # element id -> text
        self.tags: list[str] = []
        self.cards: list[str] = []  # class attribute of each gallery card
        self.thumbs: list[dict] = []  # each card's thumbnail: {"card", "href" of the link around it}
        self.names: list[dict] = []  # each card's file name link: {"card", "href", "text"}
        self.h2: list[str] = []
        self._links: list[str | None] = []  # hrefs of the <a> elements open now
        self._open: list[tuple[str, object]] = []  # (tag, key) of elements whose text is collected
        self._buf: dict = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "a":
            self._links.append(a.get("href"))
        if tag == "img":
            self.imgs.append(a)
            if self.cards and self._in_card:
                self.thumbs.append({"card": self.cards[-1], "href": self._links[-1] if self._links else None})
        if tag == "figure" and "card" in (a.get("class") or "").split():
            self.cards.append(a["class"])
            self._in_card = True
        key = None
        if tag == "a" and "fname" in (a.get("class") or "").split():
            key = ("name", len(self.names))
            self.names.append({"card": self.cards[-1] if self.cards else None, "href": a.get("href"), "text": ""})
        elif tag == "h2":
            key = ("h2", len(self.h2))
            self.h2.append("")
        elif tag == "td" and "data-metric" in a:
            key = ("cell", (a["data-class"], a["data-metric"]))
        elif a.get("id"):
            key = ("id", a["id"])
        if key:
            self._open.append((tag, key))
            self._buf[key] = ""

    def handle_data(self, data):
        for _, key in self._open:
            self._buf[key] += data

    _in_card = False

    def handle_endtag(self, tag):
        if tag == "figure":
            self._in_card = False
        if self._open and self._open[-1][0] == tag:
            _, (kind, name) = self._open.pop()
            text = self._buf.pop((kind, name)).strip()
            if kind == "name":
                self.names[name]["text"] = text
            elif kind == "h2":
                self.h2[name] = text
            else:
                (self.cells if kind == "cell" else self.texts)[name] = text
        if tag == "a" and self._links:
            self._links.pop()


def parse(text: str) -> ReportParser:
    p = ReportParser()
    p.feed(text)
    p.close()
    return p


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    """The run, then `graft calibrate` and `graft check --apply-to` on it, as a user would: the
    report training wrote is rebuilt by check with the calibration and the findings."""
    from graft.use.calibrate import calibrate_run
    from graft.check import check_photos
    from graft.cli.check import apply_to
    from graft.run.store import read_record

    root = tmp_path_factory.mktemp("report")
    # train/ + val/: the validation photos stay held out (a split graft draws itself is refitted on,
    # issue 23), so the calibration has validation photos to report on
    photos = root / "photos"
    make_split_folder(photos, train=6, val=2, seed=11)
    (photos / "train" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")  # training skips it
    shutil.copy(photos / "train" / "blue" / "blue003.jpg", photos / "train" / "blue" / "blue003 copy.jpg")  # duplicate
    with isolated_env(root):
        result = graft.train(photos, root / "run", strategy="head", cache_dir=root / "cache", workers=0,
                             aug_views=1, augment="light", progress=False)
        calibrate_run(result.run_dir, photos, cache_dir=root / "cache", workers=0)
        check = check_photos(photos, deep=False)
        apply_to(check, result.run_dir, read_record(result.run_dir), photos)
    path = result.run_dir / "report.html"
    return types.SimpleNamespace(root=root, photos=photos, run=result.run_dir, metrics=result.metrics,
                                 path=path, html=path.read_text(encoding="utf-8"), check=check)


def _copy_run(run: Path, dest: Path, **metric_changes) -> Path:
    dest.mkdir(parents=True)
    for name in ("model.json", "metrics.json", "model.safetensors"):
        shutil.copy(run / name, dest / name)
    if metric_changes:
        m = json.loads((dest / "metrics.json").read_text())
        m.update(metric_changes)
        (dest / "metrics.json").write_text(json.dumps(m))
    return dest


def test_every_picture_is_an_embedded_png_and_nothing_is_fetched(report_run):
    assert report_run.path == report_run.run / "report.html"
    p = parse(report_run.html)
    charts = {"training and validation curves", "confusion matrix", "where the time went", "augmentation preview",
              "reliability diagram"}
    assert charts <= {img.get("alt") for img in p.imgs}
    assert len(p.cards) > 0 and len(p.imgs) == len(charts) + len(p.cards)  # + one thumbnail per card
    for img in p.imgs:
        src = img["src"]
        assert src.startswith(DATA_PNG), src[:60]
        png = base64.b64decode(src[len(DATA_PNG):], validate=True)
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG"
            im.load()  # the whole stream decodes, not only the header
            assert im.width > 0 and im.height > 0
        assert img.get("alt")
    assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    assert "http://" not in report_run.html and "https://" not in report_run.html
    assert "<a " in report_run.html and all(h.startswith(("file:", "log.csv")) for h in _hrefs(report_run.html))
    assert not list(report_run.run.glob(".tmp-*"))  # written atomically, nothing left behind


def test_figures_equal_metrics_json(report_run):
    m = json.loads((report_run.run / "metrics.json").read_text())
    p = parse(report_run.html)
    assert p.texts["val-accuracy"] == fmt3(m["val_accuracy"]) == f"{m['val_accuracy']:.3f}"
    assert p.texts["strategy"] == m["strategy"] == "head"
    expected = {(c, k): f"{v[k]:.3f}" for c, v in m["per_class"].items() for k in ("precision", "recall", "f1")}
    assert p.cells == expected
    assert len(expected) == 3 * len(m["classes"])
    for c in m["classes"]:
        assert f'<span class="chip">{c}</span>' in report_run.html
    assert html.escape(m["strategy_reason"]) in report_run.html
    assert m["backbone"]["weights_digest"][:12] in report_run.html
    for key in ("extract_s", "train_s", "total_s", "data_wait_s", "step_s"):
        assert f"<code>{key}</code>" in report_run.html and f"{m['timings'][key]:.2f} s" in report_run.html
    assert f"<b>{m['cache']['hits']}</b> hit(s), <b>{m['cache']['misses']}</b> miss(es)" in report_run.html


def _hrefs(text: str) -> list[str]:
    import re

    return [html.unescape(h) for h in re.findall(r'href="([^"]*)"', text)]


def _photo_of(href: str) -> Path:
    from urllib.parse import unquote, urlparse

    url = urlparse(href)
    assert url.scheme == "file", href
    return Path(unquote(url.path))


def test_one_photo_per_class_and_every_thumbnail_links_to_its_photo(report_run):
    p = parse(report_run.html)
    m = report_run.metrics
    assert p.cards.count("card example") == len(m["classes"]) == 2
    assert len(p.thumbs) == len(p.cards) == len(p.names)  # every card: a linked thumbnail and a linked name
    for thumb, name in zip(p.thumbs, p.names):
        assert thumb["href"] == name["href"], (thumb, name)
        photo = _photo_of(thumb["href"])
        assert photo.is_file() and photo.is_relative_to(report_run.photos)
        assert name["text"] == str(photo.relative_to(report_run.photos))  # the whole name, not cut
    examples = [n for n in p.names if n["card"] == "card example"]
    assert sorted(n["text"].split("/")[1] for n in examples) == m["classes"]  # train/<class>/...
    for c, n in m["class_counts"].items():
        assert f"{n['train']} train, {n['val']} val" in report_run.html


def test_calibration_and_check_sections(report_run):
    p = parse(report_run.html)
    assert {"One photo per class", "Calibration: what predict --reject auto does", "Photo check"} <= set(p.h2)
    cal = json.loads((report_run.run / "calibration.json").read_text())
    assert p.texts["temperature"] == f"{cal['temperature']:.3f}"
    unknown = cal["val_unknown"]
    assert p.texts["val-unknown"] == f"{unknown['either']} of {unknown['n_val']}"
    from graft.report.page import fmt3

    assert p.texts["fit-kept"] == fmt3(cal["fit"]["kept"])  # the in-class photos kept, out of fold
    table = report_run.html.split('id="keep-table"')[1].split("</table>")[0]  # the trade-off, one row a --keep
    assert table.count("<tr>") == len(cal["keep_table"]) + 1 and table.count("<b>") == 5  # the chosen row
    assert 'id="novelty-table"' in report_run.html
    assert 'alt="reliability diagram"' in report_run.html
    s = report_run.check["summary"]
    assert p.texts["check-summary"].endswith(f"{s['errors']} error(s), {s['warnings']} warning(s), "
                                             f"{s['infos']} note(s).")
    assert "<code>duplicate</code>" in report_run.html  # the copied photo, found by check
    skipped = report_run.metrics["skipped"]
    assert [(Path(x["path"]).name, x["code"]) for x in skipped] == [("broken.jpg", "not_an_image")]
    assert "Skipped files (1)" in report_run.html and "red/broken.jpg" in report_run.html
    assert "no-check" not in p.texts and 'id="no-check"' not in report_run.html


def test_reliability_bins():
    import numpy as np

    from graft.report.calibration import reliability

    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    centres, acc, conf, n, ece = reliability(probs, labels)
    assert n.sum() == 4 and n[9] == 2 and n[5] == 2
    assert acc[9] == pytest.approx(0.5) and acc[5] == pytest.approx(1.0)
    assert ece == pytest.approx((2 * abs(0.5 - 0.95) + 2 * abs(1.0 - 0.6)) / 4)
    _, _, conf_t, _, _ = reliability(probs, labels, temperature=2.0)  # a higher temperature: less sure
    assert conf_t[conf_t > 0].max() < 0.95


def test_gallery_and_augmentation_preview(report_run):
    with isolated_env(report_run.root), count_backbone_forwards() as calls:
        preds = val_predictions(report_run.run, report_run.photos, workers=0)
    assert calls == []  # a head run's gallery scores the features training cached
    m = report_run.metrics
    assert len(preds) == m["n_val"]
    assert fmt3(sum(p["correct"] for p in preds) / len(preds)) == fmt3(m["val_accuracy"])
    for p in preds:
        assert p["true"] in m["classes"] and p["pred"] in m["classes"]
        assert 0.0 <= p["true_probability"] <= p["probability"] <= 1.0 + 1e-6
        assert p["correct"] == (p["true"] == p["pred"])
    wrong = sum(not p["correct"] for p in preds)
    cards = parse(report_run.html).cards
    assert cards.count("card wrong") == min(wrong, 12)
    assert cards.count("card close") == min(len(preds) - wrong, 6)
    assert "differs from metrics.json" not in report_run.html
    assert 'alt="augmentation preview"' in report_run.html and "Preset <b>light</b>" in report_run.html


def test_stored_predictions_are_what_recomputing_gives(report_run):
    with isolated_env(report_run.root):
        again = val_predictions(report_run.run, report_run.photos, workers=0)
    stored = stored_val_predictions(report_run.run)
    assert len(stored) == len(again) == report_run.metrics["n_val"]
    for a, b in zip(stored, again):
        assert (a["path"], a["true"], a["pred"], a["correct"]) == (b["path"], b["true"], b["pred"], b["correct"])
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)
        assert a["true_probability"] == pytest.approx(b["true_probability"], abs=1e-5)


def test_report_is_built_without_reading_the_photos(report_run, tmp_path, monkeypatch):
    """A report after training reads RUN/val_predictions.npz: no photo is scanned, hashed or pushed
    through the backbone. Only the gallery's thumbnails open photos, and here the photos are gone."""
    import graft.data.folder
    import graft.data.images
    import graft.data.digests

    run = _copy_run(report_run.run, tmp_path / "run")
    shutil.copy(report_run.run / "val_predictions.npz", run / "val_predictions.npz")

    def no_scan(*args, **kwargs):
        raise AssertionError("the report scanned the photos")

    opened = []

    def gone(path, *args, **kwargs):
        opened.append(str(path))
        raise OSError(f"{path}: no such file")

    monkeypatch.setattr(graft.data.folder, "scan_class_folders", no_scan)
    monkeypatch.setattr(graft.data.digests.DigestIndex, "identify", no_scan)
    monkeypatch.setattr(graft.data.images, "read_image", gone)
    with isolated_env(report_run.root), count_backbone_forwards() as calls:
        text = write_report(run, workers=0).read_text(encoding="utf-8")
    assert calls == []
    m = report_run.metrics
    preds = stored_val_predictions(run)
    wrong = sum(not p["correct"] for p in preds)
    cards = parse(text).cards
    assert cards.count("card wrong") == min(wrong, 12) and cards.count("card close") == min(len(preds) - wrong, 6)
    assert len(opened) == len(cards)  # one thumbnail per card, nothing else
    assert f"{m['n_val']} validation photos, {round(m['val_accuracy'] * m['n_val'])} right" in text
    assert "rebuild this report with" not in text  # the gallery did not ask for the photos


def test_without_photos_and_with_fine_tuning_metrics(report_run, tmp_path):
    m = report_run.metrics
    run = _copy_run(
        report_run.run, tmp_path / "ft-run", strategy="partial", strategy_reason="asked for --strategy partial",
        history={**m["history"], "epoch_s": [1.5] * len(m["history"]["train_loss"])},
        finetune={"train_stages": 2, "lr": 0.001, "batch_size": 32, "epochs": 2, "boundary_cache": True},
        timings={**m["timings"], "val_s": 0.25},
        skipped=[{"path": "photos/red/<bad>&.jpg", "reason": "not an image"}],
        probe_val_accuracy=0.954, val_accuracy=0.935,
    )
    (run / "report.html").write_text("stale")
    text = write_report(run).read_text(encoding="utf-8")
    p = parse(text)
    assert "graft report" in text and "--photos PHOTOS" in text  # how to get the gallery
    assert p.cards == []
    assert "<code>val_s</code>" in text and "0.25 s" in text
    assert "photos/red/&lt;bad&gt;&amp;.jpg" in text and "Skipped files (1)" in text
    assert "frozen stages from the boundary cache" in text and "linear probe" in text
    assert p.texts["probe-better"] == "the frozen head was better: 0.954 vs 0.935"
    assert p.texts["val-accuracy"] == "0.935"
    assert 'id="no-check"' in text and "Not calibrated" in text  # no check.json, no calibration.json
    for img in p.imgs:
        assert img["src"].startswith(DATA_PNG)


def test_cli_rebuilds_and_prints_the_path(report_run, tmp_path, capsys):
    run = _copy_run(report_run.run, tmp_path / "run")
    parser = argparse.ArgumentParser(prog="graft")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(run)])
    assert args.command == "report" and args.photos is None and args.open is False
    assert args.main(args) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    assert (run / "report.html").read_text().startswith("<!DOCTYPE html>")


# the report as the browser has drawn it, once loaded: its pictures, figures, headings and gallery links
RENDER_CHECK = """(function () {
  var cells = {};
  document.querySelectorAll("td[data-metric]").forEach(function (td) {
    cells[td.dataset.class + "/" + td.dataset.metric] = td.textContent.trim();
  });
  return JSON.stringify({
    images: Array.from(document.images).map(function (im) {
      return {w: im.naturalWidth, h: im.naturalHeight, complete: im.complete, alt: im.alt};
    }),
    accuracy: document.getElementById("val-accuracy").textContent.trim(),
    cells: cells,
    headings: Array.from(document.querySelectorAll("h2")).map(function (h) { return h.textContent.trim(); }),
    thumbs: Array.from(document.querySelectorAll("figure.card img")).map(function (im) {
      var a = im.closest("a");
      return a ? a.href : null;
    }),
    names: Array.from(document.querySelectorAll("figure.card a.fname")).map(function (a) {
      return {href: a.href, text: a.textContent, clipped: a.scrollWidth > a.clientWidth + 1};
    })
  });
})()"""
# what a person must see: the header and what it holds, each section and its heading, the footer
SEEN = ["header", "header h1", ".hero > *", "main > section", "main > section > h2", "footer"]


@needs_chromium
def test_a_real_browser_renders_every_picture(report_run, tmp_path):
    """Every picture and figure as the browser draws them; and, as a person sees the report on a
    desktop window and on half a laptop's screen, the header, each section and its heading drawn,
    on top and apart. The screenshots stay in browser.screenshot_dir() for a human to look at."""
    browser = DevTools(tmp_path / "profile")
    try:
        tab = browser.tab(DESKTOP)
        tab.open(report_run.path.as_uri())
        check = json.loads(tab.eval(RENDER_CHECK))
        on_desktop = tab.layout(SEEN, scroll=True)
        shots = [tab.screenshot("report.png")]
        tab.resize(HALF_SCREEN)
        on_half = tab.layout(SEEN, scroll=True)
        shots.append(tab.screenshot("report-half-screen.png"))
    finally:
        browser.close()
    assert_seen(on_desktop, "on a desktop window", shots[0])
    assert_seen(on_half, "on half a screen", shots[1])
    n_imgs = len(parse(report_run.html).imgs)
    assert len(check["images"]) == n_imgs >= 5
    for im in check["images"]:
        assert im["complete"] and im["w"] > 0 and im["h"] > 0, im
    m = report_run.metrics
    assert check["accuracy"] == f"{m['val_accuracy']:.3f}"
    assert check["cells"] == {f"{c}/{k}": f"{v[k]:.3f}" for c, v in m["per_class"].items()
                              for k in ("precision", "recall", "f1")}
    # the new sections render, and as the browser sees them every thumbnail links to its photo,
    # the same one its file name names and links, shown whole
    assert {"One photo per class", "Calibration: what predict --reject auto does", "Photo check"} <= set(check["headings"])
    cards = parse(report_run.html).cards
    assert len(check["thumbs"]) == len(check["names"]) == len(cards) >= 2
    for href, name in zip(check["thumbs"], check["names"]):
        assert href is not None and href == name["href"]
        photo = _photo_of(href)
        assert photo.is_file() and name["text"] == str(photo.relative_to(report_run.photos))
        assert not name["clipped"], name


def test_check_apply_to_refuses_other_photos(report_run, tmp_path):
    from graft.check import check_photos
    from graft.cli.check import apply_to
    from graft.errors import GraftError
    from graft.run.store import read_record

    other = make_photo_folder(tmp_path / "other", classes=("green", "red"), per_class=2)
    run = _copy_run(report_run.run, tmp_path / "run")
    with pytest.raises(GraftError, match="trained on classes blue, red.*has green, red"):
        apply_to(check_photos(other, deep=False), run, read_record(run), other)
    assert not (run / "check.json").exists()
