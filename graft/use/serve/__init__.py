"""`graft serve RUN`: a trained run over HTTP (Starlette on uvicorn), with a page to try it.

    GET  /         a self-contained page (page.html): drop photos, see the top classes as bars
    POST /predict  multipart file(s) or raw image bytes -> {"results": [...]} (graft.predict's dicts)
    GET  /model    the model card: classes, backbone, held-out accuracy, calibration, limits
    GET  /health   liveness and the batching counters

One idea per module: config (settings, sizes), uploads (reading and judging a request's photos:
413/415/422, the body's deadline), budget (pixels per second), guard (the Host allow-list and the
Origin check a browser-facing server needs), protocol (the headers' deadline), memory (giving
freed decoding buffers back), batcher (micro-batching: requests that arrive together share one
forward pass), app (routes and statuses), server (the socket and uvicorn). Decoding runs in a
small thread pool (two threads: each holds a whole decoded photo) and the forward pass in its own
thread, so the event loop only moves bytes.
"""

from graft.use.serve.app import create_app, resolve_reject
from graft.use.serve.batcher import Batcher, BatchStats
from graft.use.serve.config import DEFAULT_MAX_UPLOAD, MAX_FILES, ServeConfig, cli_config, parse_max_upload
from graft.use.serve.server import listen, serve, uvicorn_config
from graft.use.serve.uploads import BadImage, UploadTooLarge, sniff

__all__ = ["DEFAULT_MAX_UPLOAD", "MAX_FILES", "BadImage", "BatchStats", "Batcher", "ServeConfig", "UploadTooLarge",
           "cli_config", "create_app", "listen", "parse_max_upload", "resolve_reject", "serve", "sniff", "uvicorn_config"]
