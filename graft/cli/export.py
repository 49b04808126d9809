"""`graft export RUN --format onnx|torchscript [--out FILE]`."""

from __future__ import annotations

import json

from graft.cli._args import run_arg, weights_arg

FORMATS = ("onnx", "torchscript")  # graft.use.export.FORMATS' keys; listed here so --help imports no torch

HELP = "write a run as an ONNX or TorchScript file"  # `graft --help`'s line


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help=HELP,
        description="Export RUN's classifier: the uint8 centre crop (N, S, S, 3) RGB in, class "
        "probabilities and logits out (and the novelty distance of a calibrated run). The file's "
        "metadata and export.json beside it record the classes, the preprocessing, the calibration "
        "and the file's SHA-256; an ONNX export also writes the client predict_onnx.py beside it.")
    run_arg(p)
    p.add_argument("--format", "-f", dest="format", required=True, choices=FORMATS,
                   help="onnx (RUN/model.onnx) or torchscript (RUN/model.torchscript.pt)")
    p.add_argument("--out", "-o", metavar="FILE", default=None, help="file to write (default: in RUN)")
    weights_arg(p)
    p.add_argument("--json", action="store_true", help="print the export metadata as JSON on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    p.set_defaults(main=main)


def main(args) -> int:
    from graft.use.export import export_run, metadata_path

    out = export_run(args.run_dir, args.format, args.out, weights=args.weights)
    meta_file = metadata_path(args.run_dir, out)
    if args.json:
        print(json.dumps({"file": str(out), "metadata": str(meta_file), **json.loads(meta_file.read_text())}))
    elif not args.quiet:
        doc = json.loads(meta_file.read_text())
        entry = doc["files"][out.name]
        cal = "calibration" if doc["calibration"] else "no calibration"
        print(f"wrote {out} ({entry['bytes'] / 1e6:.1f} MB, sha256 {entry['sha256'][:16]}...)\n"
              f"      {meta_file} (classes, preprocessing, {cal})")
        if args.format == "onnx" and doc.get("client"):
            client = out.parent / doc["client"]["file"]
            print(f"      {client} (reference client: python {client} {out} PHOTO...)")
        print(f"check: {entry['check']}")
    return 0
