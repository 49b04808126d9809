"""Running the app: the socket bound first (a port in use is one clear line, before seconds of
loading the model), then uvicorn until interrupted."""

from __future__ import annotations

import logging
import socket

from graft.errors import GraftError
from graft.use.predictor import Predictor
from graft.use.serve.app import create_app
from graft.use.serve.config import ServeConfig

log = logging.getLogger("graft")


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

