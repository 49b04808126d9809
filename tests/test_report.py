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
import subprocess
import types
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

import graft
from conftest import count_backbone_forwards, isolated_env, make_photo_folder
from graft.cli.report import add_parser
from graft.report import fmt3, stored_val_predictions, val_predictions, write_report

CHROMIUM = Path("/usr/bin/chromium")
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
        self._open: list[tuple[str, object]] = []  # (tag, key) of elements whose text is collected
        self._buf: dict = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(a)
        if tag == "figure" and "card" in (a.get("class") or "").split():
            self.cards.append(a["class"])
        key = None
        if tag == "td" and "data-metric" in a:
            key = ("cell", (a["data-class"], a["data-metric"]))
        elif a.get("id"):
            key = ("id", a["id"])
        if key:
            self._open.append((tag, key))
            self._buf[key] = ""

    def handle_data(self, data):
        for _, key in self._open:
            self._buf[key] += data

    def handle_endtag(self, tag):
        if self._open and self._open[-1][0] == tag:
            _, (kind, name) = self._open.pop()
            text = self._buf.pop((kind, name)).strip()
            (self.cells if kind == "cell" else self.texts)[name] = text


def parse(text: str) -> ReportParser:
    p = ReportParser()
    p.feed(text)
    p.close()
    return p


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    photos = make_photo_folder(root / "photos", per_class=8, seed=11)
    with isolated_env(root):
        result = graft.train(photos, root / "run", strategy="head", cache_dir=root / "cache", workers=0,
                             aug_views=1, augment="light", progress=False)
        path = write_report(result.run_dir, photos=photos, workers=0)
    return types.SimpleNamespace(root=root, photos=photos, run=result.run_dir, metrics=result.metrics,
                                 path=path, html=path.read_text(encoding="utf-8"))


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
    charts = {"training and validation curves", "confusion matrix", "where the time went", "augmentation preview"}
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
    )
    (run / "report.html").write_text("stale")
    text = write_report(run).read_text(encoding="utf-8")
    p = parse(text)
    assert "graft report" in text and "--photos PHOTOS" in text  # how to get the gallery
    assert p.cards == []
    assert "<code>val_s</code>" in text and "0.25 s" in text
    assert "photos/red/&lt;bad&gt;&amp;.jpg" in text and "Skipped files (1)" in text
    assert "frozen stages from the boundary cache" in text and "linear probe" in text
    assert p.texts["val-accuracy"] == fmt3(m["val_accuracy"])
    for img in p.imgs:
        assert img["src"].startswith(DATA_PNG)


def test_cli_rebuilds_and_prints_the_path(report_run, tmp_path, capsys):
    run = _copy_run(report_run.run, tmp_path / "run")
    parser = argparse.ArgumentParser(prog="graft")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(run)])
    assert args.command == "report" and args.photos is None and args.open is False
    assert args.run(args) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    assert (run / "report.html").read_text().startswith("<!DOCTYPE html>")


RENDER_CHECK = """<script>
window.addEventListener("load", function () {
  var cells = {};
  document.querySelectorAll("td[data-metric]").forEach(function (td) {
    cells[td.dataset.class + "/" + td.dataset.metric] = td.textContent.trim();
  });
  var out = document.createElement("pre");
  out.id = "render-check";
  out.textContent = JSON.stringify({
    images: Array.from(document.images).map(function (im) {
      return {w: im.naturalWidth, h: im.naturalHeight, complete: im.complete, alt: im.alt};
    }),
    accuracy: document.getElementById("val-accuracy").textContent.trim(),
    cells: cells
  });
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (apt-get install -y chromium)")
def test_a_real_browser_renders_every_picture(report_run, tmp_path):
    page = tmp_path / "report-check.html"
    page.write_text(report_run.html.replace("</body>", RENDER_CHECK + "</body>"), encoding="utf-8")
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dumped = parse(proc.stdout)
    assert "render-check" in dumped.texts, "the page's load handler did not run:\n" + proc.stderr[-2000:]
    check = json.loads(dumped.texts["render-check"])
    n_imgs = len(parse(report_run.html).imgs)
    assert len(check["images"]) == n_imgs >= 5
    for im in check["images"]:
        assert im["complete"] and im["w"] > 0 and im["h"] > 0, im
    m = report_run.metrics
    assert check["accuracy"] == f"{m['val_accuracy']:.3f}"
    assert check["cells"] == {f"{c}/{k}": f"{v[k]:.3f}" for c, v in m["per_class"].items()
                              for k in ("precision", "recall", "f1")}
