"""`graft serve`: the real server (uvicorn, in a thread, on a free loopback port) answering over
HTTP: the statuses of good and bad uploads, the JSON, micro-batching under concurrency, no
leaked files after bad input, the CLI, and the page driven in headless Chromium.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from browser import DESKTOP, PHONE, DevTools, assert_seen, needs_chromium
from conftest import ServerThread, isolated_env, make_photo
from graft.use.predictor import Predictor
from graft.use.serve import DEFAULT_MAX_UPLOAD, ServeConfig, create_app, parse_max_upload

LIMIT = 1 << 20  # the test server's --max-upload: 1 MB keeps the oversized uploads cheap


@pytest.fixture(scope="module")
def served(trained_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    with isolated_env(root):
        predictor = Predictor(trained_run.run)
        config = ServeConfig(max_upload=LIMIT, batch_window_ms=50, max_batch=8)
        app = create_app(predictor, config)
        with ServerThread(app, config) as srv:
            yield types.SimpleNamespace(url=srv.url, predictor=predictor, run=trained_run, root=root,
                                        stats=app.state.batcher.stats)


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served.url, timeout=120) as c:
        yield c


def jpeg(kind="red", seed=0, size=(160, 120)) -> bytes:
    buf = io.BytesIO()
    make_photo(np.random.default_rng(seed), kind, size=size).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def strip_key(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("path", "input")}


# --- good uploads ------------------------------------------------------------------------------

def test_model_card_health_and_a_self_contained_page(client, served):
    card = client.get("/model").json()
    assert card["classes"] == ["blue", "red"]
    assert card["val_accuracy"] == served.run.metrics["val_accuracy"]
    assert card["backbone"]["spec"] == "default" and card["reject"] == "none" and card["max_upload"] == LIMIT
    health = client.get("/health").json()
    assert health["status"] == "ok" and {"batches", "photos", "largest_batch", "batch_sizes"} <= set(health)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<script>" in html and "<style>" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page must not load anything remote"
    assert "@import" not in html and "url(" not in html
    # the page is page.html, shipped as package data, told this server's upload limit
    shipped = resources.files("graft.use.serve").joinpath("page.html").read_text(encoding="utf-8")
    assert html == shipped.replace("__MAX_UPLOAD__", str(LIMIT)) and f"const MAX_UPLOAD = {LIMIT};" in html


def test_multipart_files_and_raw_bytes_answer_as_the_predictor(client, served):
    red, blue = jpeg("red", 1), jpeg("blue", 2)
    r = client.post("/predict", files=[("file", ("a-red.jpg", red, "image/jpeg")),
                                       ("file", ("a-blue.jpg", blue, "image/jpeg"))])
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    results = r.json()["results"]
    assert [x["input"] for x in results] == ["a-red.jpg", "a-blue.jpg"]
    want = served.predictor.predict([red, blue])
    for got, w in zip(results, want):
        assert got["predictions"][0]["class"] == w["predictions"][0]["class"]
        for p, q in zip(got["predictions"], w["predictions"]):
            assert p["class"] == q["class"] and p["probability"] == pytest.approx(q["probability"], abs=1e-5)
    assert [x["predictions"][0]["class"] for x in results] == ["red", "blue"]
    raw = client.post("/predict?topk=1&name=x.jpg", content=red, headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200
    (one,) = raw.json()["results"]
    assert one["input"] == "x.jpg" and len(one["predictions"]) == 1 and one["predictions"][0]["class"] == "red"
    # curl --data-binary declares a form; the content decides
    form = client.post("/predict", content=blue, headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 200 and form.json()["results"][0]["predictions"][0]["class"] == "blue"


def test_reject_answers_unknown(trained_run):
    from starlette.testclient import TestClient

    predictor = Predictor(trained_run.run)
    with TestClient(create_app(predictor, ServeConfig(reject="1.0")), base_url="http://localhost") as c:
        assert c.get("/model").json()["reject"] == "1"
        (r,) = c.post("/predict", content=jpeg("red", 3)).json()["results"]
    assert r["class"] == "unknown" and "low confidence" in r["reason"] and r["predictions"][0]["class"] == "red"


# --- bad uploads -------------------------------------------------------------------------------

def test_not_an_image_is_415(client):
    tiff = io.BytesIO()
    make_photo(np.random.default_rng(0), "red").save(tiff, format="TIFF")
    for body in (b"hello, not a photo", b"%PDF-1.4 fake", tiff.getvalue()):
        r = client.post("/predict", content=body, headers={"content-type": "image/jpeg"})
        assert r.status_code == 415, body[:20]
        assert "not an image graft reads" in r.json()["error"]
    r = client.post("/predict", files={"file": ("notes.txt", b"plain text", "text/plain")})
    assert r.status_code == 415 and r.json()["results"][0]["status"] == 415
    empty = client.post("/predict", files={"file": ("empty.jpg", b"", "image/jpeg")})
    assert empty.status_code == 415 and "empty" in empty.json()["error"]
    nothing = client.post("/predict")
    assert nothing.status_code == 400 and "no image" in nothing.json()["error"]


def test_undecodable_images_and_bombs_are_422(client):
    whole = png(make_photo(np.random.default_rng(1), "blue", size=(300, 200)))
    truncated = client.post("/predict", content=whole[: len(whole) // 3])
    assert truncated.status_code == 422 and "truncated" in truncated.json()["error"]
    # over Pillow's decompression-bomb limit (89 megapixels), 12 KB on the wire
    bomb = png(Image.new("1", (10_000, 10_000)))
    assert len(bomb) < 100_000
    r = client.post("/predict", content=bomb)
    assert r.status_code == 422 and "decompression bomb" in r.json()["error"]
    # under Pillow's limit, but 81 megapixels in a few KB: graft's own density check refuses it
    dense = png(Image.new("1", (9_000, 9_000)))
    r = client.post("/predict", files={"file": ("dense.png", dense, "image/png")})
    assert r.status_code == 422 and "decompression bomb" in r.json()["error"]
    # one bad photo among good ones: 200, with the bad one's own status
    r = client.post("/predict", files=[("file", ("ok.jpg", jpeg("red", 4), "image/jpeg")),
                                       ("file", ("bomb.png", bomb, "image/png")),
                                       ("file", ("text.jpg", b"text", "image/jpeg"))])
    assert r.status_code == 200
    ok, bad, text = r.json()["results"]
    assert ok["predictions"][0]["class"] == "red"
    assert bad["status"] == 422 and text["status"] == 415


def raw_exchange(url: str, head: bytes, body_chunks, timeout=60) -> tuple[int, int]:
    """Send `head` and then body chunks until the server answers; -> (status, body bytes sent).
    A plain socket, because it can stop sending the moment the answer comes (httpx cannot)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head)
        sent = 0
        s.setblocking(False)
        answer = b""
        for chunk in body_chunks:
            try:
                answer += s.recv(65536)
            except BlockingIOError:
                pass
            if answer:
                break
            try:
                s.sendall(chunk)
                sent += len(chunk)
            except BlockingIOError:  # the server stopped reading: it has answered or will
                break
            except (BrokenPipeError, ConnectionResetError):
                break
        s.setblocking(True)
        while b"\r\n" not in answer:
            more = s.recv(65536)
            if not more:
                break
            answer += more
    return int(answer.split(b" ", 2)[1]), sent


def test_over_max_upload_is_413_while_streaming(client, served):
    # a declared length over the limit is refused before a byte of the body is read
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {LIMIT + 1}\r\n\r\n").encode()
    status, sent = raw_exchange(served.url, head, [])
    assert status == 413
    # chunked, no length: the server answers 413 once the limit streams past, without the end
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"\xff" * 65536
    chunks = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(10 * LIMIT // len(piece)))
    status, sent = raw_exchange(served.url, head, chunks)
    assert status == 413 and sent < 10 * LIMIT  # answered before the client ran out of body
    # an ordinary client's multipart upload over the limit
    r = client.post("/predict", files={"file": ("big.jpg", b"\xff\xd8" + b"\0" * LIMIT, "image/jpeg")})
    assert r.status_code == 413 and "--max-upload" in r.json()["error"]
    assert client.get("/health").status_code == 200


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def our_temp_files() -> set:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("graft-predict-")}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_bad_uploads_leak_no_files(served):
    whole = png(make_photo(np.random.default_rng(2), "red", size=(300, 200)))
    bad = [whole[:500], b"not an image", png(Image.new("1", (10_000, 10_000))), b"\xff\xd8" + b"\0" * (LIMIT + 10)]
    with httpx.Client(base_url=served.url, timeout=120) as c:  # warm: the client's own sockets
        c.get("/health")
        before_fds, before_tmp = open_fds(), our_temp_files()
        for _ in range(5):
            for body in bad:
                assert c.post("/predict", files={"file": ("x.png", body, "image/png")}).status_code in (413, 415, 422)
                assert c.post("/predict", content=body).status_code in (413, 415, 422)
        assert c.get("/health").status_code == 200
        time.sleep(0.5)
        assert open_fds() <= before_fds + 2, "bad uploads left files open"
        assert our_temp_files() == before_tmp


# --- batching ----------------------------------------------------------------------------------

def test_concurrent_requests_share_forward_passes(served):
    photos = [jpeg("red" if i % 2 else "blue", 10 + i) for i in range(12)]
    before = dict(served.stats.sizes), served.stats.batches, served.stats.photos
    start = threading.Barrier(len(photos))

    def one(i):
        with httpx.Client(base_url=served.url, timeout=120) as c:
            start.wait()
            return c.post("/predict", content=photos[i]).json()["results"][0]

    with ThreadPoolExecutor(len(photos)) as pool:
        got = list(pool.map(one, range(len(photos))))
    assert [r["predictions"][0]["class"] for r in got] == ["red" if i % 2 else "blue" for i in range(12)]
    for r, w in zip(got, served.predictor.predict(photos)):
        for p, q in zip(r["predictions"], w["predictions"]):
            assert p["class"] == q["class"] and p["probability"] == pytest.approx(q["probability"], abs=1e-5)
    sizes = {k: v - before[0].get(k, 0) for k, v in served.stats.sizes.items() if v - before[0].get(k, 0)}
    assert served.stats.photos - before[2] == 12
    assert served.stats.batches - before[1] < 12 and max(sizes) > 1, sizes
    health = httpx.get(served.url + "/health").json()
    assert health["largest_batch"] > 1 and health["largest_batch"] <= 8


def test_the_event_loop_answers_while_a_forward_pass_runs(served):
    """The forward pass runs off the event loop: with one held inside it, /health and /model
    still answer (were the loop blocked, they would time out)."""
    import copy

    inside, release = threading.Event(), threading.Event()
    held = copy.copy(served.predictor)  # the same model and lock, its own forward
    real = served.predictor.forward

    def forward(batch):
        inside.set()
        assert release.wait(120)
        return real(batch)

    held.forward = forward
    with ServerThread(create_app(held, ServeConfig(batch_window_ms=0))) as srv, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, srv.url + "/predict", content=jpeg("red", 30), timeout=120)
        try:
            assert inside.wait(120)
            assert httpx.get(srv.url + "/health", timeout=30).json()["batches"] == 0
            assert httpx.get(srv.url + "/model", timeout=30).status_code == 200
            assert not pending.done()
        finally:
            release.set()
        r = pending.result(120)
    assert r.status_code == 200 and r.json()["results"][0]["predictions"][0]["class"] == "red"


def test_malformed_requests_get_json_errors(client):
    r = client.post("/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and "error" in r.json()
    too_many = [("file", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(70)]
    r = client.post("/predict", files=too_many)
    assert r.status_code == 400 and "Too many files" in r.json()["error"]
    assert client.post("/predict?topk=lots", content=jpeg()).status_code == 400
    assert client.get("/predict").status_code == 405


# --- the command line --------------------------------------------------------------------------

def test_graft_serve_command(trained_run, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "graft", "serve", str(trained_run.run), "--port", "0",
                             "--max-upload", "64KB"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        url, lines = None, []
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
            url = m and m.group(1)
        assert url, "".join(lines)
        for _ in range(200):  # the socket listens before the model loads; wait for the app
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert httpx.get(url + "/model").json()["max_upload"] == 64 * 1024
        r = httpx.post(url + "/predict", content=jpeg("red", 5), timeout=60)
        assert r.status_code == 200 and r.json()["results"][0]["predictions"][0]["class"] == "red"
        assert httpx.post(url + "/predict", content=b"\0" * 70_000).status_code == 413
        # the port is taken now: a second server says so in one line
        port = url.rsplit(":", 1)[1]
        busy = subprocess.run([sys.executable, "-m", "graft", "serve", str(trained_run.run), "--port", port],
                              capture_output=True, text=True, timeout=120)
        assert busy.returncode == 2 and "cannot listen on 127.0.0.1:" in busy.stderr
        assert "Traceback" not in busy.stderr and len(busy.stderr.strip().splitlines()) == 1
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=30)[1]
    # uvicorn shuts down cleanly on SIGTERM, then re-raises it (exit status -15)
    assert "Application shutdown complete" in rest and "Traceback" not in rest


def test_sizes_and_defaults():
    assert parse_max_upload("20MB") == DEFAULT_MAX_UPLOAD == 20 * 1024 * 1024
    assert parse_max_upload("512KB") == 512 * 1024 and parse_max_upload("1000") == 1000
    from graft.errors import GraftError

    for bad in ("lots", "-1MB", "0", "1e400"):  # 1e400: no overflow, one line
        with pytest.raises(GraftError, match="--max-upload"):
            parse_max_upload(bad)


# --- the page, in a real browser ---------------------------------------------------------------

PAGE_STATE = """JSON.stringify({
  card: Object.fromEntries([...document.querySelectorAll('#card-fields dd')].map(d => [d.dataset.field, d.textContent])),
  results: [...document.querySelectorAll('.result')].map(f => ({
    name: f.dataset.name, state: f.dataset.state, top: (f.querySelector('.top-class') || {}).textContent,
    error: (f.querySelector('div.error:not(.top-class)') || {}).textContent,
    bars: [...f.querySelectorAll('.bar')].map(b => [b.dataset.class, b.querySelector('.pct').textContent])}))
})"""


ANSWERED = ("[...document.querySelectorAll('.result')].length === 3"
            " && !document.querySelector('.result[data-state=pending]')")
# what a person must see: the heading, the drop zone, the model card, each answer and its class name
SEEN = ["h1", "#drop", "#card", ".result", ".result .top-class"]


@needs_chromium
def test_the_page_in_a_real_browser(served, tmp_path):
    """The page as a person uses it: photos picked through its file input, each answer shown, and
    the heading, the drop zone and the answers drawn, on top and apart, on a desktop window and
    on a phone's. The screenshots stay in browser.screenshot_dir() for a human to look at."""
    red, blue, text = tmp_path / "a red one.jpg", tmp_path / "blue.png", tmp_path / "notes.jpg"
    red.write_bytes(jpeg("red", 20, size=(400, 300)))
    make_photo(np.random.default_rng(21), "blue", size=(300, 400)).save(blue)
    text.write_bytes(b"not a photo at all")
    browser = DevTools(tmp_path / "profile")
    try:
        tab = browser.tab(DESKTOP)
        tab.open(served.url + "/")
        tab.wait_for("document.querySelector('#card-fields [data-field=classes]')", "the model card never loaded")
        fresh = tab.layout(SEEN[:3])
        tab.pick_files("#file", [red, blue, text])
        tab.wait_for(ANSWERED, "the answers never came", timeout=120)
        page = json.loads(tab.eval(PAGE_STATE))
        answered = tab.layout(SEEN)
        shots = [tab.screenshot("serve-page.png")]
        tab.resize(PHONE)
        on_phone = tab.layout(SEEN, scroll=True)
        shots.append(tab.screenshot("serve-page-phone.png"))
    finally:
        browser.close()
    assert_seen(fresh, "before any upload", shots[0])
    assert_seen(answered, "after the answers came", shots[0])
    assert_seen(on_phone, "on a phone", shots[1])
    # each answer's class name, as drawn on the page
    tops = [s["text"] for s in answered["elements"] if s["selector"] == ".result .top-class"]
    assert sorted(tops) == ["blue", "error", "red"]
    card = page["card"]
    assert card["classes"] == "blue, red" and card["backbone"].startswith("default")
    assert card["held-out accuracy"].startswith(f"{100 * served.run.metrics['val_accuracy']:.1f}%")
    shown = {r["name"]: r for r in page["results"]}
    want = served.predictor.predict([red, blue])
    for path, w in zip((red, blue), want):
        r = shown[path.name]
        assert r["state"] == "done" and r["top"] == w["predictions"][0]["class"]
        assert r["bars"] == [[p["class"], f"{100 * p['probability']:.1f}%"] for p in w["predictions"]]
    assert shown[red.name]["top"] == "red" and shown[blue.name]["top"] == "blue"
    assert shown[text.name]["state"] == "error" and "not an image" in shown[text.name]["error"]
