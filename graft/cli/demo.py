"""`graft demo`: the whole pipeline on a small photo set built from scikit-image's photos."""

from __future__ import annotations

import json

from graft.cli._args import output_args, setting_args, workers_given

HELP = "train and evaluate on a small photo set that ships with graft's dependencies"  # `graft --help`'s line


def add_parser(subparsers) -> None:
    d = subparsers.add_parser("demo", help=HELP,
                              description="Builds a demo set from scikit-image's bundled photos (train crops and "
                              "held-out val crops of 5 photos), trains on the default backbone and evaluates.")
    d.add_argument("--data", metavar="DIR", default=None, help="where to write the demo photos (default: in the cache)")
    d.add_argument("--out", "-o", metavar="RUN", default="runs/demo", help="run folder (default runs/demo)")
    d.add_argument("--cache-dir", metavar="DIR")
    setting_args(d, ["workers"])
    output_args(d)
    d.set_defaults(main=main)


def main(args) -> int:
    from pathlib import Path

    from graft.cache.layout import DEMO, cache_root
    from graft.data.demo import make_demo_photos
    from graft.use.inference import evaluate
    from graft.recipe import train
    from graft.cli.evaluate import format_confusion
    from graft.cli.train import train_summary

    data = Path(args.data) if args.data else cache_root(args.cache_dir) / DEMO
    quiet = args.quiet or args.json
    made = make_demo_photos(data, parents=not args.data)
    if not quiet:
        print(f"demo photos: {made} (crops of scikit-image's bundled photos; "
              f"train and val crops come from different parts of each photo)")
    result = train(data, args.out, cache_dir=args.cache_dir, workers=workers_given(args), progress=not quiet)
    m = evaluate(args.out, data / "val", cache_dir=args.cache_dir, workers=workers_given(args))
    if args.json:
        print(json.dumps({"train": result.metrics, "evaluate": m}))
    elif not args.quiet:
        print(train_summary(result.metrics, result.run_dir))
        print("\n" + format_confusion(m["confusion"], m["classes"]))
        print(f"\ntry: graft predict {args.out} {data / 'val' / 'cat' / 'cat-00.jpg'}")
    return 0
