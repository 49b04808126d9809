"""What several sub-commands share: option groups, `--workers` parsing, aligned tables."""

from __future__ import annotations

from graft.errors import GraftError


def backbone_args(p) -> None:
    p.add_argument("--backbone", "-b", default="default", metavar="SPEC",
                   help="default (= lite1), lite0, lite1, lite2 (EfficientNet-Lite0/1/2, ImageNet, ship with "
                   "graft; see README 'Which backbone to pick'), timm:<model> or tv:<model>; several joined "
                   "by + (e.g. lite0+lite2) concatenate their frozen features (head strategy only)")
    p.add_argument("--weights", metavar="FILE", help="local weights file for the backbone (.safetensors or .pth)")


def augment_args(p) -> None:
    p.add_argument("--augment", "--preset", dest="augment", default=None, metavar="PRESET",
                   help="augmentation preset: none, light, standard, heavy (default: standard when fine-tuning, "
                   "light for --aug-views); see `graft augment list`")
    p.add_argument("--aug", metavar="KNOBS|FILE", default=None,
                   help="override knobs, e.g. flip=0.5,rotate=15,crop_scale=0.35-1, or a .json/.toml file")


def run_arg(p, help: str | None = "run folder written by graft train") -> None:
    """The RUN positional (stored as `run_dir`: `run` is the sub-command's function)."""
    p.add_argument("run_dir", metavar="RUN", help=help)


def weights_arg(p) -> None:
    p.add_argument("--weights", metavar="FILE", help="backbone weights file, if not where training found it")


def cache_dir_arg(p, what: str = "feature cache to reuse (default as for train)") -> None:
    p.add_argument("--cache-dir", metavar="DIR", help=what)


def engine_arg(p) -> None:
    p.add_argument("--engine", default="auto", choices=("auto", "onnx", "torch"),
                   help="what runs the network: auto (default: RUN's ONNX export while it is fresh, which "
                   "starts without torch; else torch), onnx (that export, or an error), torch")


def tta_arg(p) -> None:
    p.add_argument("--tta", choices=("none", "flip", "crops"), default="none",
                   help="test-time augmentation: none (default: the centre crop), flip (the mean of the centre "
                   "crop's logits and its left-right mirror's: twice the forward passes) or crops (the centre and "
                   "four corner crops: five times); off by default: neither helped on hymenoptera (bench/tta.py)")


def loader_args(p) -> None:
    p.add_argument("--workers", default="auto", metavar="N|auto", help="image decoding processes (default auto)")


def output_args(p, json_help: str = "print the result as JSON on stdout") -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or summary")
    p.add_argument("--json", action="store_true", help=json_help)


def workers(value) -> int | None:
    """--workers: "auto" (None: chosen from the machine) or a number >= 0."""
    if value in (None, "auto"):
        return None
    try:
        n = int(value)
        if n < 0:
            raise ValueError
        return n
    except ValueError:
        raise GraftError(f"--workers must be 'auto' or a number >= 0, got {value!r}") from None


def table(rows) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def per_class_table(per_class: dict) -> str:
    width = max(5, *(len(c) for c in per_class))
    lines = [f"{'class':<{width}}  precision  recall  support"]
    for name, v in per_class.items():
        lines.append(f"{name:<{width}}  {v['precision']:>9.3f}  {v['recall']:>6.3f}  {v['support']:>7d}")
    return "\n".join(lines)


def human(n: float) -> str:
    """Bytes as people read them: 129.4 MB."""
    for unit in ("B", "KB", "MB", "GB"):
        if round(n, 1) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
