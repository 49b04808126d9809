"""`graft serve RUN`: the run over HTTP, with a page to try it (the server itself is graft.use.serve)."""

from __future__ import annotations

from graft.cli._args import engine_arg, number, run_arg, size, weights_arg, whole

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
    p.add_argument("--port", type=whole("--port", 0, 65535), default=8000,
                   help="(default 8000; 0 picks a free one)")
    p.add_argument("--max-upload", type=size("--max-upload", 1, 1 << 30), default="20MB", metavar="SIZE",
                   help="largest request body, e.g. 20MB (default), 512KB; larger ones get 413")
    p.add_argument("--batch-window-ms", type=number("--batch-window-ms", 0, 10_000), default=5.0, metavar="MS",
                   help="how long the first waiting photo waits for others to share its forward pass (default 5)")
    p.add_argument("--max-batch", type=whole("--max-batch", 1, 1024), default=16, metavar="N",
                   help="most photos in one forward pass (default 16; 1 serves one photo per pass)")
    p.add_argument("--reject", default=None, metavar="auto|none|P",
                   help="answer `unknown` as `graft predict --reject` does (default: auto when RUN is "
                   "calibrated, else none)")
    p.add_argument("--threads", type=whole("--threads", 1, 1024), default=None, metavar="N",
                   help="threads of the forward pass (default: one per core; 1 on a busy shared machine)")
    limits = p.add_argument_group("limits (a server a browser page can reach)")
    limits.add_argument("--max-megapixels", type=number("--max-megapixels", 0, 10_000, above=True), default=100.0,
                        metavar="MP", help="pixels of one request's photos together, read from their headers "
                        "before any is decoded (default 100: eight phone photos); more get 413")
    limits.add_argument("--megapixels-per-s", type=number("--megapixels-per-s", 0, 100_000, above=True),
                        default=100.0, metavar="MP", help="pixels decoded per second, every request together "
                        "(default 100, with bursts of 2 s); beyond, 503 with Retry-After")
    limits.add_argument("--decoders", type=whole("--decoders", 1, 64), default=None, metavar="N",
                        help="photos decoded at once (default 2: each holds a whole decoded photo in memory)")
    limits.add_argument("--allow-host", action="append", metavar="NAME",
                        help="also answer requests whose Host is NAME (default: localhost, 127.0.0.1, ::1 and "
                        "--host; with --host 0.0.0.0 any IP address and this machine's name); repeatable; * for any")
    limits.add_argument("--allow-origin", action="append", metavar="ORIGIN",
                        help="also take POSTs from pages of ORIGIN, e.g. https://example.org (default: the "
                        "server's own page only); repeatable; * for any")
    limits.add_argument("--header-timeout", type=number("--header-timeout", 0, 3600, above=True), default=10.0,
                        metavar="S", help="a request's headers must arrive within S seconds (default 10)")
    limits.add_argument("--body-timeout", type=number("--body-timeout", 0, 3600, above=True), default=60.0,
                        metavar="S", help="and its body within S seconds (default 60); else 408")
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
