"""`graft augment list` (presets and knobs) and `graft augment preview` (a picture of them)."""

from __future__ import annotations

from graft.cli._args import setting_args, whole

HELP = "see and tune data augmentation"  # `graft --help`'s line


def add_parser(subparsers) -> None:
    a = subparsers.add_parser("augment", help=HELP,
                              description="List the augmentation presets, or preview what a setting does.")
    asub = a.add_subparsers(dest="augment_command", metavar="ACTION", required=True)
    asub.add_parser("list", help="every preset's settings, and what each knob means")
    pv = asub.add_parser("preview", help="write a picture of photos under random draws, one row per op")
    pv.add_argument("photos", metavar="PHOTOS", help="photo folder (a few photos are picked)")
    pv.add_argument("--out", "-o", required=True, metavar="PNG", help="picture to write")
    setting_args(pv, ["augment", "aug"])  # as graft train takes them
    pv.add_argument("--photos", dest="n_photos", type=whole("--photos", 1, 64), default=3,
                    help="photos to show (default 3)")
    pv.add_argument("--draws", type=whole("--draws", 1, 64), default=6, help="random draws per row (default 6)")
    pv.add_argument("--size", type=whole("--size", 16, 1024), default=240,
                    help="crop size (default 240, the default backbone lite1's)")
    pv.add_argument("--seed", type=whole("--seed", 0, 2**32 - 1), default=0)
    a.set_defaults(main=main)


def main(args) -> int:
    if args.augment_command == "list":
        from graft.augment import preset_table

        print(preset_table())
        return 0
    from graft.recipe.augmentation import augment_preview

    out = augment_preview(args.photos, args.out, preset=args.augment, aug=args.aug, n_photos=args.n_photos,
                          n_draws=args.draws, size=args.size, seed=args.seed)
    print(f"wrote {out}")
    return 0
