"""Named augmentation strengths (`none`, `light`, `standard`, `heavy`) and the user's overrides.

Users tune augmentation through flat knobs (`rotate=15,crop_scale=0.35-1`), on the command line or
in a JSON/TOML file, rather than through op classes; this module maps knobs onto op
hyperparameters, validates them with messages naming the bad key and value, and builds the
Pipeline. `standard` is the default for fine-tuning.
"""

from __future__ import annotations

import difflib
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from graft.errors import GraftError

if TYPE_CHECKING:  # the ops are torch code: imported by `build`, so `graft augment list` needs no torch
    from graft.augment._pipeline import Pipeline

DEFAULT_PRESET = "standard"


@dataclass(frozen=True)
class Knob:
    """One user-facing setting: the op hyperparameter it sets and what values it takes."""

    op: str
    param: str
    kind: str  # "prob", "number", "range" (low-high) or "choice"
    help: str
    lo: float = 0.0
    hi: float = math.inf
    choices: tuple = ()

    def expects(self) -> str:
        if self.kind == "prob":
            return "a probability between 0 and 1"
        if self.kind == "number":
            return f"a number between {self.lo:g} and {self.hi:g}"
        if self.kind == "range":
            return f"a range low-high (e.g. 0.35-1) with {self.lo:g} < low <= high <= {self.hi:g}"
        return f"one of {', '.join(self.choices)}"

    def parse(self, key: str, raw):
        """The value `raw` (a string from the command line, or a number/list/string from a
        config file) converted and checked; ValueError names the key, the value and what it takes."""
        error = ValueError(f"augment override {key}={_show(raw)}: expected {self.expects()}")
        if self.kind == "choice":
            if raw not in self.choices:
                raise error
            return raw
        try:
            if self.kind == "range":
                parts = raw.split("-") if isinstance(raw, str) else list(raw)
                low, high = (_number(v) for v in parts)  # exactly two, or ValueError
                if not (self.lo < low <= high <= self.hi):
                    raise error
                return (low, high)
            value = _number(raw)
        except (TypeError, ValueError):
            raise error from None
        hi = 1.0 if self.kind == "prob" else self.hi
        if not self.lo <= value <= hi:
            raise error
        return value


KNOBS: dict[str, Knob] = {
    "crop_scale": Knob("crop", "scale", "range", "random crop's area, as a fraction of the photo's", 0, 1),
    "crop_ratio": Knob("crop", "ratio", "range", "random crop's aspect ratio (width/height)", 0, 10),
    "flip": Knob("flip", "horizontal_p", "prob", "probability of a left-right mirror"),
    "vflip": Knob("flip", "vertical_p", "prob", "probability of a top-bottom mirror"),
    "rotate": Knob("rotate", "degrees", "number", "largest rotation, degrees", 0, 180),
    "rotate_p": Knob("rotate", "p", "prob", "probability of rotating"),
    "shear": Knob("shear", "degrees", "number", "largest shear along each axis, degrees", 0, 60),
    "shear_p": Knob("shear", "p", "prob", "probability of shearing"),
    "warp": Knob("local_warp", "alpha", "number", "local warp strength: RMS displacement, pixels", 0, 100),
    "warp_sigma": Knob("local_warp", "sigma", "number", "local warp smoothness: correlation length, pixels", 0, 1000),
    "warp_p": Knob("local_warp", "p", "prob", "probability of warping"),
    "brightness": Knob("color_jitter", "brightness", "number", "brightness factor drawn in [1-x, 1+x]", 0, 10),
    "contrast": Knob("color_jitter", "contrast", "number", "contrast factor drawn in [1-x, 1+x]", 0, 10),
    "saturation": Knob("color_jitter", "saturation", "number", "saturation factor drawn in [1-x, 1+x]", 0, 10),
    "jitter_p": Knob("color_jitter", "p", "prob", "probability of brightness/contrast/saturation jitter"),
    "pca": Knob("pca_color", "sigma", "number", "PCA colour (AlexNet) strength: std of the alphas", 0, 10),
    "pca_p": Knob("pca_color", "p", "prob", "probability of the PCA colour shift"),
    "rgb_shift": Knob("rgb_shift", "std", "number", "std of each channel's offset, 0..255 units", 0, 255),
    "rgb_shift_dist": Knob("rgb_shift", "distribution", "choice", "distribution of the RGB offsets",
                           choices=("normal", "uniform")),
    "rgb_shift_p": Knob("rgb_shift", "p", "prob", "probability of the RGB shift"),
}

_NONE = {
    "crop_scale": (1.0, 1.0),  # the whole photo, resized
    "crop_ratio": (3 / 4, 4 / 3),
    "flip": 0.0,
    "vflip": 0.0,
    "rotate": 0.0,
    "rotate_p": 0.5,
    "shear": 0.0,
    "shear_p": 0.5,
    "warp": 0.0,
    "warp_sigma": 8.0,
    "warp_p": 0.25,
    "brightness": 0.0,
    "contrast": 0.0,
    "saturation": 0.0,
    "jitter_p": 1.0,
    "pca": 0.0,
    "pca_p": 1.0,
    "rgb_shift": 0.0,
    "rgb_shift_dist": "normal",
    "rgb_shift_p": 0.5,
}

# Crop scales follow fastai's fine-tuning default (min_scale 0.35) for `standard` and timm's
# ImageNet training default (0.08) for `heavy`; jitter strengths follow timm (0.4 heavy).
PRESETS: dict[str, dict] = {
    "none": _NONE,
    "light": {**_NONE, "crop_scale": (0.6, 1.0), "flip": 0.5, "brightness": 0.1, "contrast": 0.1},
    "standard": {
        **_NONE,
        "crop_scale": (0.35, 1.0),
        "flip": 0.5,
        "rotate": 10.0,
        "brightness": 0.2,
        "contrast": 0.2,
        "saturation": 0.2,
        "pca": 0.1,
    },
    "heavy": {
        **_NONE,
        "crop_scale": (0.08, 1.0),
        "flip": 0.5,
        "rotate": 20.0,
        "shear": 10.0,
        "warp": 3.0,
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.4,
        "pca": 0.1,
        "rgb_shift": 10.0,
    },
}


def parse_overrides(text: str) -> dict:
    """Parse "flip=0.5,rotate=15,rgb_shift=8,crop_scale=0.35-1" into checked knob values
    (ranges become (low, high) tuples). Raises ValueError naming the bad key or value."""
    raw = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(
                f"augment override {item!r} is not key=value (e.g. rotate=15); valid keys: {', '.join(KNOBS)}"
            )
        if key in raw:
            raise ValueError(f"augment override {key!r} is given twice")
        raw[key] = value.strip()
    return check_overrides(raw)


def check_overrides(overrides: Mapping) -> dict:
    """Check a mapping knob -> value (strings, numbers or [low, high] lists) and convert it."""
    checked = {}
    for key, raw in overrides.items():
        knob = KNOBS.get(key)
        if knob is None:
            close = difflib.get_close_matches(str(key), KNOBS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown augment override {key!r}{hint}; valid keys: {', '.join(KNOBS)}")
        checked[key] = knob.parse(key, raw)
    return checked


def load_overrides(path) -> dict:
    """Overrides from a .json or .toml file: a flat table of knobs, or one under an `augment`
    table (so the settings can live in a larger config file). Values as in `check_overrides`."""
    path = Path(path)
    if path.suffix not in (".json", ".toml"):
        raise GraftError(f"augment config {path} must be a .json or .toml file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GraftError(f"cannot read augment config {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise GraftError(f"augment config {path} is not valid {path.suffix[1:].upper()}: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("augment"), dict):
        data = data["augment"]
    if not isinstance(data, dict):
        raise GraftError(f"augment config {path} must hold a table of knob = value")
    try:
        return check_overrides(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def build(preset: str = DEFAULT_PRESET, overrides=None, size=224, pca=None) -> Pipeline:
    """The Pipeline of `preset` with `overrides` (a string for parse_overrides, or a mapping for
    check_overrides) applied, cropping to `size` (int or (h, w)). `pca` is fit_pca's
    (eigvals, eigvecs) or a {"eigvals", "eigvecs"} mapping; None uses ImageNet's. Ops at zero
    strength are left out; the crop is always there (the `none` preset resizes the whole photo)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown augment preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if isinstance(overrides, str):
        overrides = parse_overrides(overrides)
    elif overrides is not None:
        overrides = check_overrides(overrides)
    knobs = {**PRESETS[preset], **(overrides or {})}
    from graft.augment._pipeline import OPS, Pipeline

    hparams: dict[str, dict] = {name: {} for name in OPS}
    for key, value in knobs.items():
        hparams[KNOBS[key].op][KNOBS[key].param] = value
    hparams["crop"]["size"] = size
    if pca is not None:
        eigvals, eigvecs = (pca["eigvals"], pca["eigvecs"]) if isinstance(pca, Mapping) else pca
        hparams["pca_color"].update(eigvals=eigvals, eigvecs=eigvecs)
    ops = [OPS[name](**hp) for name, hp in hparams.items()]
    return Pipeline(op for op in ops if op.name == "crop" or not op.is_identity)


def preset_table() -> str:
    """Every preset's knob values as an aligned plain-text table (for `graft augment list`)."""
    names = [f"{p}*" if p == DEFAULT_PRESET else p for p in PRESETS]
    rows = [["knob", *names, "meaning"]]
    rows += [[key, *(_show(PRESETS[p][key]) for p in PRESETS), knob.help] for key, knob in KNOBS.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("* default for fine-tuning. Override knobs as key=value pairs, e.g. rotate=15,crop_scale=0.35-1")
    return "\n".join(lines)


def _number(raw) -> float:
    if isinstance(raw, bool):
        raise TypeError("a bool is not a number")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError("not finite")
    return value


def _show(value) -> str:
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"{value[0]:.3g}-{value[1]:.3g}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
