"""Running the app: the socket bound first (a port in use is one clear line, before seconds of
loading the model), then uvicorn until interrupted."""

from __future__ import annotations

import dataclasses
import logging
import socket

from graft.errors import GraftError
from graft.use.predictor import Predictor
from graft.use.serve.app import create_app
from graft.use.serve.config import ServeConfig
from graft.use.serve.protocol import with_header_timeout

log = logging.getLogger("graft")


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a port in use is one clear line, not a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as e:  # OverflowError: a port outside 0-65535
        sock.close()
        raise GraftError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app, config: ServeConfig | None = None, log_level: str = "info"):
    """uvicorn's settings for `app`: the header deadline (graft.use.serve.protocol), idle
    keep-alive connections closed after 5 s, and no access log."""
    import uvicorn

    cfg = config or ServeConfig()
    return uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", timeout_keep_alive=5,
                          http=with_header_timeout(cfg.header_timeout_s), h11_max_incomplete_event_size=16 * 1024)


def serve(run, *, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          weights=None, threads: int | None = None, engine: str = "auto", log_level: str = "info") -> None:
    """Load `run` once and serve it until interrupted. `threads`: the forward pass's threads
    (default one per core); on a machine shared with other busy processes, 1
    avoids threads waiting for each other at every layer (bench/serve_load.py)."""
    import uvicorn

    config = dataclasses.replace(config or ServeConfig(), host=host)  # the bound address is a Host it answers to
    sock = listen(host, port)  # first: a port in use is said before seconds of loading
    try:
        app = create_app(Predictor(run, weights=weights, threads=threads, engine=engine), config)
        card = app.state.card
        log.info("serving %s (%s; classes %s; reject %s; %s engine) on http://%s:%d/", run,
                 card["backbone"]["spec"], ", ".join(card["classes"]), card["reject"], card["engine"], host,
                 sock.getsockname()[1])
        server = uvicorn.Server(uvicorn_config(app, config, log_level))
        server.run(sockets=[sock])
    finally:
        sock.close()

