"""The Starlette app: the routes, their statuses and JSON, the model card and the page.

Bad input gets a status and a one-line message, never a crash: 400 a Host the server is not
known by, 403 a POST from another site's page (graft.use.serve.guard), 413 over `max_upload`
(Content-Length first, then the streamed body) or over `max_pixels` (the photos' headers, before
any is decoded), 408 a body slower than `body_timeout_s`, 503 over the pixels a second (with
Retry-After), 400 no image, a malformed form or a topk outside 1..1000, and per photo 415/422
from graft.use.serve.uploads. Of several photos, any usable one makes the answer 200; if none
is, 422 if any was 422, else 415."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from importlib import resources
from typing import TYPE_CHECKING

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from graft.use.serve.batcher import Batcher
from graft.use.serve.budget import PixelBudget, retry_after
from graft.use.serve.config import ServeConfig, size_text
from graft.use.serve.guard import Guard
from graft.use.serve.memory import TRIM_AFTER_PIXELS, malloc_trim
from graft.use.serve.uploads import BadImage, UploadTooLarge, UploadTooSlow, decode, measure, read_uploads

if TYPE_CHECKING:
    from graft.use.predictor import Predictor

log = logging.getLogger("graft")


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


def page_html(max_upload: int) -> str:
    """The page at GET / (page.html, shipped as package data), told the upload limit."""
    page = resources.files("graft.use.serve").joinpath("page.html").read_text(encoding="utf-8")
    return page.replace("__MAX_UPLOAD__", str(max_upload))


def create_app(predictor: Predictor, config: ServeConfig | None = None) -> Starlette:
    service = _Service(predictor, config or ServeConfig())
    routes = [Route("/", service.index), Route("/model", service.model), Route("/health", service.health),
              Route("/predict", service.predict, methods=["POST"])]
    cfg = service.cfg
    guard = Middleware(Guard, host=cfg.host, allow_hosts=cfg.allow_hosts, allow_origins=cfg.allow_origins)
    app = Starlette(routes=routes, lifespan=service.lifespan, middleware=[guard],
                    exception_handlers={Exception: _server_error, HTTPException: _http_error})
    app.state.batcher = service.batcher
    app.state.card = service.card
    return app


class _Service:
    """What the routes share: the predictor behind its batcher, the decoding threads, the card."""

    def __init__(self, predictor: Predictor, cfg: ServeConfig):
        self.predictor, self.cfg = predictor, cfg
        mode, cal = resolve_reject(predictor, cfg.reject)
        self.batcher = Batcher(predictor, window_s=cfg.batch_window_ms / 1000.0, max_batch=cfg.max_batch,
                               calibration=cal, plain=cal is None)
        self.decoders = anyio.CapacityLimiter(cfg.decoder_threads())
        self.pixels = PixelBudget(cfg.pixel_rate, least=cfg.max_pixels)
        self.card = {**predictor.describe(), "reject": mode, "max_upload": cfg.max_upload,
                     "max_batch": self.batcher.max_batch, "batch_window_ms": cfg.batch_window_ms,
                     "max_pixels": cfg.max_pixels, "pixels_per_s": cfg.pixel_rate, "decoders": cfg.decoder_threads()}
        self.started = time.time()
        self.page = page_html(cfg.max_upload)

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        """The batcher's task lives as long as the server."""
        await self.batcher.start()
        try:
            yield
        finally:
            await self.batcher.stop()

    async def index(self, request: Request):
        return HTMLResponse(self.page)

    async def model(self, request: Request):
        return JSONResponse(self.card)

    async def health(self, request: Request):
        return JSONResponse({"status": "ok", "uptime_s": round(time.time() - self.started, 3),
                             **self.batcher.stats.to_json()})

    async def predict(self, request: Request):
        topk = request.query_params.get("topk", "3")
        if not (topk.isdigit() and 1 <= int(topk) <= 1000):  # "0" used to become 1 silently
            return _error(400, f"topk must be a whole number from 1 to 1000, got {topk!r}")
        limit = self.cfg.max_upload
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _error(413, _too_large(limit))  # refused before reading a byte
        try:
            uploads = await read_uploads(request, limit, self.cfg.body_timeout_s)
        except UploadTooLarge:
            return _error(413, _too_large(limit))
        except UploadTooSlow:
            return _error(408, f"the upload did not arrive within {self.cfg.body_timeout_s:g} s "
                               f"(graft serve --body-timeout)")
        except ClientDisconnect:
            return _error(400, "the client went away before the upload was complete")
        if not uploads:
            return _error(400, "no image in the request: POST image bytes, or a multipart form with image files")
        return await self._judged(uploads, int(topk))

    async def _judged(self, uploads: list[tuple[str, bytes]], topk: int) -> JSONResponse:
        """Every photo's pixels from its header, against the request's and the second's budgets,
        before any is decoded; then each decoded and predicted."""
        sizes = await anyio.to_thread.run_sync(measure, uploads, limiter=self.decoders)
        pixels = sum(n for n in sizes if isinstance(n, int))
        if pixels > self.cfg.max_pixels:
            return _error(413, f"{pixels / 1e6:.1f} megapixels in this request, over the limit of "
                               f"{self.cfg.max_pixels / 1e6:g} (graft serve --max-megapixels): send fewer or "
                               f"smaller photos")
        wait = self.pixels.take(pixels)
        if wait:
            return _error(503, f"busy: over {self.cfg.pixel_rate / 1e6:g} megapixels a second (graft serve "
                               f"--megapixels-per-s); retry in {retry_after(wait)} s",
                          headers={"Retry-After": retry_after(wait)})
        try:
            return _answer(await asyncio.gather(*(self._one(name, data, size, topk)
                                                  for (name, data), size in zip(uploads, sizes))))
        finally:
            if pixels >= TRIM_AFTER_PIXELS and self.decoders.borrowed_tokens == 0:
                await anyio.to_thread.run_sync(malloc_trim)

    async def _one(self, name: str, data: bytes, size, topk: int) -> dict:
        key = {"input": name}
        if isinstance(size, BadImage):
            return {**key, "error": size.message, "status": size.status}
        try:
            crop = await anyio.to_thread.run_sync(decode, self.predictor, data, limiter=self.decoders)
        except BadImage as e:
            return {**key, "error": e.message, "status": e.status}
        return await self.batcher.predict(crop, key, topk)


def _answer(results: list[dict]) -> JSONResponse:
    """One request's answer: 200 if any photo was usable, else the worst photo's status."""
    good = [r for r in results if "error" not in r]
    if good:
        status = 200
    else:
        status = 422 if any(r["status"] == 422 for r in results) else 415
    body = {"results": results}
    if not good:
        body["error"] = results[0]["error"] if len(results) == 1 else "no usable image in the request"
    return JSONResponse(body, status_code=status)


async def _server_error(request: Request, exc: Exception):
    log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return _error(500, f"internal error ({type(exc).__name__}); the server keeps running")


async def _http_error(request: Request, exc: HTTPException):  # e.g. a malformed multipart form
    return _error(exc.status_code, str(exc.detail))


def _too_large(limit: int) -> str:
    return f"upload over the limit of {size_text(limit)} (graft serve --max-upload)"


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)
