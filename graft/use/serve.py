"""`graft serve RUN`: a trained run over HTTP (Starlette on uvicorn), with a page to try it.

    GET  /         a self-contained page: drop photos, see the top classes as bars
    POST /predict  multipart file(s) or raw image bytes -> {"results": [...]} (graft.predict's dicts)
    GET  /model    the model card: classes, backbone, held-out accuracy, calibration, limits
    GET  /health   liveness and the batching counters

Why micro-batching: one forward pass of several photos costs less per photo than passes of one
(per-layer overheads and thread hand-offs are paid once per pass; on a GPU, far less), so
requests that arrive within `batch_window_ms` of each other, or while the previous pass runs,
share one pass, up to `max_batch`. The pass runs in one dedicated thread and decoding in a small
thread pool, so the event loop only moves bytes and never waits for the model.

Bad input gets a status and a one-line message, never a crash; the content decides, not the
declared type. 415: the bytes are not an image format graft reads (JPEG, PNG, WebP, BMP, GIF).
422: they are one, but cannot be decoded safely (truncated, damaged, or a decompression bomb:
too many pixels, or a huge canvas in a few bytes). 413: the request body is over `max_upload`
(checked on Content-Length before reading, and again while the body streams in; the rest is
read and discarded, so an oversized upload is never held in memory). 400: no image, or a malformed
form. Of several photos in one request, any usable one makes the answer 200 (the others are
error entries with their own "status"); if none is, 422 if any was 422, else 415.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import socket
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import anyio
import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from graft.data.images import SUPPORTED_EXTENSIONS
from graft.errors import GraftError, ImageError
from graft.use.predictor import Predictor

log = logging.getLogger("graft")

DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024
MAX_FILES = 64  # photos in one multipart request
_FORMATS = sorted(set(SUPPORTED_EXTENSIONS.values()))


class UploadTooLarge(Exception):
    pass


class BadImage(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# --- micro-batching --------------------------------------------------------------------------

@dataclass
class _Item:
    crop: np.ndarray  # uint8 (size, size, 3)
    key: dict
    topk: int
    future: asyncio.Future


@dataclass
class BatchStats:
    batches: int = 0
    photos: int = 0
    largest: int = 0
    sizes: Counter = field(default_factory=Counter)
    forward_s: float = 0.0  # time in forward passes (the inference thread busy)

    def to_json(self) -> dict:
        return {"batches": self.batches, "photos": self.photos, "largest_batch": self.largest,
                "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
                "forward_s": round(self.forward_s, 4)}


class Batcher:
    """Collects prepared crops from concurrent requests and runs them through one forward pass.

    The first waiting crop opens a window of `window_s`; whatever arrives in it (and whatever
    queued while the previous pass ran) joins, up to `max_batch`. `max_batch=1` serves one photo
    per pass (the baseline bench/serve_load.py compares with)."""

    def __init__(self, predictor: Predictor, *, window_s: float, max_batch: int, calibration=None,
                 plain: bool = True):
        self.predictor = predictor
        self.window_s = max(0.0, float(window_s))
        self.max_batch = max(1, int(max_batch))
        self.calibration, self.plain = calibration, plain
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="graft-forward")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="graft-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def predict(self, crop: np.ndarray, key: dict, topk: int) -> dict:
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(crop, key, topk, fut))
        return await fut

    async def _collect(self) -> list[_Item]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.window_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return [it for it in batch if not it.future.done()]  # a client that left is not waited for

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._forward, batch)
            except Exception as e:  # a bug, not bad input: every waiting request hears of it
                log.exception("forward pass failed")
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(e)
                continue
            s = self.stats
            s.forward_s += time.perf_counter() - t0
            s.batches, s.photos, s.largest = s.batches + 1, s.photos + len(batch), max(s.largest, len(batch))
            s.sizes[len(batch)] += 1
            for it, r in zip(batch, results):
                if not it.future.done():
                    it.future.set_result(r)

    def _forward(self, batch: list[_Item]) -> list[dict]:
        p = self.predictor
        logits, novelty = p.forward(np.stack([it.crop for it in batch]))
        return p.answers([it.key for it in batch], logits, novelty, [it.topk for it in batch],
                         self.calibration, self.plain)


# --- reading uploads -------------------------------------------------------------------------

def _limited(receive, limit: int):
    """The ASGI `receive` with a byte budget: the body is counted as it streams in."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise UploadTooLarge()
        return message

    return wrapped


async def _uploads(request: Request, limit: int) -> list[tuple[str, bytes]]:
    """[(name, bytes)] of the request's images: the files of a multipart form, else the body
    whatever its declared type (`curl --data-binary @x.jpg` says form-urlencoded); the content
    is judged later. Raises UploadTooLarge."""
    ctype = request.headers.get("content-type", "")
    limited = Request(request.scope, _limited(request.receive, limit))
    if ctype.startswith("multipart/form-data"):
        out = []
        async with limited.form(max_files=MAX_FILES, max_fields=MAX_FILES) as form:
            for i, (_, value) in enumerate(form.multi_items()):
                if hasattr(value, "read"):
                    out.append((value.filename or f"file-{i}", await value.read()))
        return out
    chunks = []
    async for chunk in limited.stream():
        chunks.append(chunk)
    data = b"".join(chunks)
    return [(request.query_params.get("name", "upload"), data)] if data else []


def sniff(data: bytes) -> None:
    """Raise BadImage(415) unless the bytes are in a format graft reads, BadImage(422) for a
    header that declares more pixels than Pillow's decompression-bomb limit."""
    if not data:
        raise BadImage(415, "empty upload (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_FORMATS):
                pass
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(422, f"refused: too many pixels, a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise BadImage(415, f"not an image graft reads ({', '.join(_FORMATS)})") from None
    except Exception as e:
        raise BadImage(422, f"cannot decode image ({e or type(e).__name__})") from None


# --- the application -------------------------------------------------------------------------

@dataclass
class ServeConfig:
    max_upload: int = DEFAULT_MAX_UPLOAD
    batch_window_ms: float = 5.0
    max_batch: int = 16
    reject: object = None  # as --reject; None: "auto" when the run is calibrated, else "none"
    decoders: int = 0  # threads decoding uploads at once (0: one per core)


def resolve_reject(predictor: Predictor, reject):
    """-> (mode text, calibration). Unset (None): "auto" if the run has a usable calibration,
    else "none"; set, as `graft predict --reject` (a GraftError stops the start)."""
    from graft.use.reject import parse_reject

    if reject is None:
        reject = "auto" if predictor.calibration is not None else "none"
    reject = parse_reject(reject)
    if reject is None:
        return "none", None
    return ("auto" if reject == "auto" else f"{reject:g}"), predictor.rejection(reject)


def create_app(predictor: Predictor, config: ServeConfig | None = None) -> Starlette:
    cfg = config or ServeConfig()
    mode, cal = resolve_reject(predictor, cfg.reject)
    batcher = Batcher(predictor, window_s=cfg.batch_window_ms / 1000.0, max_batch=cfg.max_batch,
                      calibration=cal, plain=cal is None)
    decoders = anyio.CapacityLimiter(cfg.decoders or max(1, len(os.sched_getaffinity(0))))
    card = {**predictor.describe(), "reject": mode, "max_upload": cfg.max_upload, "max_batch": batcher.max_batch,
            "batch_window_ms": cfg.batch_window_ms}
    started = time.time()
    page = PAGE.replace("__MAX_UPLOAD__", str(cfg.max_upload))

    async def index(request: Request):
        return HTMLResponse(page)

    async def model(request: Request):
        return JSONResponse(card)

    async def health(request: Request):
        return JSONResponse({"status": "ok", "uptime_s": round(time.time() - started, 3), **batcher.stats.to_json()})

    async def predict(request: Request):
        try:
            topk = int(request.query_params.get("topk", 3))
        except ValueError:
            return _error(400, "topk must be a whole number")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cfg.max_upload:
            return _error(413, _too_large(cfg.max_upload))  # refused before reading a byte
        try:
            uploads = await _uploads(request, cfg.max_upload)
        except UploadTooLarge:
            return _error(413, _too_large(cfg.max_upload))
        except ClientDisconnect:
            return _error(400, "the client went away before the upload was complete")
        if not uploads:
            return _error(400, "no image in the request: POST image bytes, or a multipart form with image files")
        results = await asyncio.gather(*(_one(name, data, topk) for name, data in uploads))
        good = [r for r in results if "error" not in r]
        if good:
            status = 200
        else:
            status = 422 if any(r["status"] == 422 for r in results) else 415
        body = {"results": results}
        if not good:
            body["error"] = results[0]["error"] if len(results) == 1 else "no usable image in the request"
        return JSONResponse(body, status_code=status)

    async def _one(name: str, data: bytes, topk: int) -> dict:
        key = {"input": name}
        try:
            crop = await anyio.to_thread.run_sync(_decode, predictor, data, limiter=decoders)
        except BadImage as e:
            return {**key, "error": e.message, "status": e.status}
        return await batcher.predict(crop, key, topk)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    async def server_error(request: Request, exc: Exception):
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _error(500, f"internal error ({type(exc).__name__}); the server keeps running")

    async def http_error(request: Request, exc: HTTPException):  # e.g. a malformed multipart form
        return _error(exc.status_code, str(exc.detail))

    routes = [Route("/", index), Route("/model", model), Route("/health", health),
              Route("/predict", predict, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={Exception: server_error, HTTPException: http_error})
    app.state.batcher = batcher
    app.state.card = card
    return app


def _decode(predictor: Predictor, data: bytes) -> np.ndarray:
    sniff(data)
    try:
        return predictor.prepare(data)
    except ImageError as e:
        raise BadImage(422, e.reason) from None


def _too_large(limit: int) -> str:
    return f"upload over the limit of {_size(limit)} (graft serve --max-upload)"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024


def parse_size(text: str) -> int:
    """"20MB", "512KB", "1.5GB" or a number of bytes."""
    t = str(text).strip().upper().replace(" ", "")
    for unit, mult in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)):
        if t.endswith(unit):
            t, scale = t[: -len(unit)], mult
            break
    else:
        scale = 1
    try:
        n = int(float(t) * scale)
    except ValueError:
        raise GraftError(f"--max-upload takes a size like 20MB, 512KB or a number of bytes, got {text!r}") from None
    if n <= 0:
        raise GraftError(f"--max-upload must be positive, got {text!r}")
    return n


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a port in use is one clear line, not a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise GraftError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(run, *, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          weights=None, threads: int | None = None, engine: str = "auto", log_level: str = "info") -> None:
    """Load `run` once and serve it until interrupted. `threads`: the forward pass's threads
    (default one per core); on a machine shared with other busy processes, 1
    avoids threads waiting for each other at every layer (bench/serve_load.py)."""
    import uvicorn

    sock = listen(host, port)  # first: a port in use is said before seconds of loading
    try:
        app = create_app(Predictor(run, weights=weights, threads=threads, engine=engine), config)
        card = app.state.card
        log.info("serving %s (%s; classes %s; reject %s; %s engine) on http://%s:%d/", run,
                 card["backbone"]["spec"], ", ".join(card["classes"]), card["reject"], card["engine"], host,
                 sock.getsockname()[1])
        server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on"))
        server.run(sockets=[sock])
    finally:
        sock.close()


def cli_config(args) -> ServeConfig:
    if args.threads is not None and args.threads < 1:
        raise GraftError(f"--threads must be at least 1, got {args.threads}")
    if args.max_batch < 1:
        raise GraftError(f"--max-batch must be at least 1, got {args.max_batch}")
    if args.batch_window_ms < 0:
        raise GraftError(f"--batch-window-ms must be >= 0, got {args.batch_window_ms}")
    return ServeConfig(max_upload=parse_size(args.max_upload), batch_window_ms=args.batch_window_ms,
                       max_batch=args.max_batch, reject=args.reject)


PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>graft serve</title>
<style>
  :root { --ink: #1d2330; --muted: #6b7280; --line: #e5e7eb; --bar: #3b82f6; --warn: #b45309; }
  body { font: 15px/1.45 system-ui, sans-serif; color: var(--ink); margin: 0; background: #f8fafc; }
  main { max-width: 980px; margin: 0 auto; padding: 24px; display: grid; gap: 20px;
         grid-template-columns: minmax(0, 1fr) 280px; }
  h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 0 0 8px; }
  .panel { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 16px; }
  #drop { border: 2px dashed #94a3b8; border-radius: 10px; padding: 28px; text-align: center; cursor: pointer;
          color: var(--muted); background: #fff; }
  #drop.over { border-color: var(--bar); background: #eff6ff; }
  #results { display: grid; gap: 12px; margin-top: 16px; }
  .result { display: grid; grid-template-columns: 112px 1fr; gap: 14px; margin: 0; align-items: start; }
  .result img { width: 112px; height: 112px; object-fit: cover; border-radius: 8px; background: #e2e8f0; }
  .name { color: var(--muted); font-size: 13px; overflow-wrap: anywhere; }
  .top-class { font-size: 18px; font-weight: 600; margin: 2px 0 6px; }
  .result.unknown .top-class { color: var(--warn); }
  .reason { color: var(--warn); font-size: 13px; margin-bottom: 6px; }
  .error { color: #b91c1c; }
  .bar { display: grid; grid-template-columns: 120px 1fr 56px; gap: 8px; align-items: center; font-size: 13px; }
  .track { background: #e5e7eb; border-radius: 4px; height: 10px; overflow: hidden; }
  .fill { background: var(--bar); height: 100%; }
  .pct { text-align: right; font-variant-numeric: tabular-nums; }
  dl { margin: 0; display: grid; grid-template-columns: auto 1fr; gap: 4px 10px; font-size: 13px; }
  dt { color: var(--muted); } dd { margin: 0; overflow-wrap: anywhere; }
  @media (max-width: 760px) { main { grid-template-columns: 1fr; } }
</style>
</head>
<body>
<main>
  <section>
    <h1>Try the classifier</h1>
    <label id="drop" for="file">Drop photos here, or click to pick some<br>
      <small>JPEG, PNG, WebP, BMP or GIF, up to <span id="limit"></span> each request</small></label>
    <input id="file" type="file" accept="image/*" multiple hidden>
    <div id="results"></div>
  </section>
  <aside class="panel" id="card">
    <h2>Model</h2>
    <dl id="card-fields"><dt>loading</dt><dd>...</dd></dl>
  </aside>
</main>
<script>
"use strict";
const MAX_UPLOAD = __MAX_UPLOAD__;
const $ = (id) => document.getElementById(id);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function size(n) { return n >= 1048576 ? (n / 1048576).toFixed(0) + " MB" : (n / 1024).toFixed(0) + " KB"; }
$("limit").textContent = size(MAX_UPLOAD);

async function loadCard() {
  const dl = $("card-fields");
  try {
    const m = await (await fetch("/model")).json();
    dl.replaceChildren();
    const acc = m.val_accuracy == null ? "not recorded"
      : (100 * m.val_accuracy).toFixed(1) + "%" + (m.n_val ? " of " + m.n_val + " held-out photos" : "");
    const rows = [["classes", m.classes.join(", ")], ["backbone", m.backbone.spec + " (" + m.backbone.arch + ")"],
                  ["strategy", m.strategy || "?"], ["held-out accuracy", acc],
                  ["trained on", m.n_train == null ? "?" : m.n_train + " photos"],
                  ["unknown", m.reject === "none" ? "off (every photo gets a class)"
                    : m.reject === "auto" ? "calibrated thresholds" : "top probability below " + m.reject]];
    for (const [k, v] of rows) {
      const dt = el("dt", "", k), dd = el("dd", "", v);
      dd.dataset.field = k;
      dl.append(dt, dd);
    }
  } catch (e) { dl.replaceChildren(el("dt", "error", "cannot load /model: " + e)); }
}

function show(fig, r) {
  const body = fig.querySelector(".body");
  if (r.error) {
    fig.dataset.state = "error";
    body.append(el("div", "top-class error", "error"), el("div", "error", r.error));
    return;
  }
  const top = r.class || r.predictions[0].class;
  fig.dataset.state = "done";
  if (top === "unknown") fig.classList.add("unknown");
  body.append(el("div", "top-class", top));
  if (r.reason) body.append(el("div", "reason", r.reason));
  for (const p of r.predictions) {
    const row = el("div", "bar"), track = el("div", "track"), fill = el("div", "fill");
    fill.style.width = (100 * p.probability).toFixed(1) + "%";
    track.append(fill);
    row.append(el("span", "cls", p.class), track, el("span", "pct", (100 * p.probability).toFixed(1) + "%"));
    row.dataset.class = p.class;
    body.append(row);
  }
}

async function classify(file) {
  const fig = el("figure", "result"), img = el("img"), body = el("figcaption", "body");
  img.alt = file.name;
  img.src = URL.createObjectURL(file);
  img.onload = () => URL.revokeObjectURL(img.src);
  fig.dataset.name = file.name;
  fig.dataset.state = "pending";
  body.append(el("div", "name", file.name));
  fig.append(img, body);
  $("results").prepend(fig);
  if (file.size > MAX_UPLOAD) { show(fig, {error: "over the upload limit of " + size(MAX_UPLOAD)}); return; }
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const res = await fetch("/predict", {method: "POST", body: form});
    const data = await res.json();
    show(fig, data.results ? data.results[0] : {error: data.error || ("HTTP " + res.status)});
  } catch (e) { show(fig, {error: "request failed: " + e}); }
}

function take(files) { for (const f of files) classify(f); }
$("file").addEventListener("change", (e) => { take(e.target.files); e.target.value = ""; });
const drop = $("drop");
for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
drop.addEventListener("drop", (e) => take(e.dataTransfer.files));
loadCard();
</script>
</body>
</html>
"""
