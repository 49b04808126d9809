"""`graft serve RUN`: the run over HTTP, with a page to try it (the server itself is graft.use.serve)."""

from __future__ import annotations

from graft.cli._args import engine_arg, run_arg, weights_arg

HELP = "serve a run over HTTP, with a web page to try it"  # `graft --help`'s line


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help=HELP,
        description="Load RUN once and answer POST /predict (multipart files or raw image bytes; JSON "
        "out), GET /model, GET /health, and GET / (a page to drop photos on). Requests that arrive "
        "together share one forward pass (micro-batching).")
    run_arg(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="(default 8000; 0 picks a free one)")
    p.add_argument("--max-upload", default="20MB", metavar="SIZE",
                   help="largest request body, e.g. 20MB (default), 512KB; larger ones get 413")
    p.add_argument("--batch-window-ms", type=float, default=5.0, metavar="MS",
                   help="how long the first waiting photo waits for others to share its forward pass (default 5)")
    p.add_argument("--max-batch", type=int, default=16, metavar="N",
                   help="most photos in one forward pass (default 16; 1 serves one photo per pass)")
    p.add_argument("--reject", default=None, metavar="auto|none|P",
                   help="answer `unknown` as `graft predict --reject` does (default: auto when RUN is "
                   "calibrated, else none)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads of the forward pass (default: one per core; 1 on a busy shared machine)")
    engine_arg(p)
    weights_arg(p)
    p.set_defaults(main=main)


def main(args) -> int:
    import os
    import sys

    if "torch" not in sys.modules:  # OpenMP reads it once, when torch loads (so: while graft's
        # CLI imports torch lazily). Waiting OpenMP threads sleep instead of spinning: a server
        # shares its cores with its own decoding threads and often with other programs, and on a
        # busy 2-core machine a batch-1 forward pass took 3.2 s with spinning threads, 0.18 s without.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from graft.use.serve import cli_config, serve

    serve(args.run_dir, host=args.host, port=args.port, config=cli_config(args), weights=args.weights,
          threads=args.threads, engine=args.engine)
    return 0
