"""model.json as a typed record: what a run is, read and checked in one place.

`RunRecord.from_json` is the one door from a model.json document to the rest of graft: it refuses
a document of another format or one whose entries would build a nonsense network or allocate
gigabytes before any other check (one line each, naming the entry), and gives frozen typed
fields. `to_json` writes exactly the document graft has always written, key for key, so a run
written before reads the same and a new model.json is the same file.

What the training recipe records beside the model (`training`, `augmentation`) is not needed to
predict, so it is not checked: an entry of the wrong type reads as not recorded. Imports no
torch: graft.use.predictor reads a run to run its fresh ONNX export without it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields

from graft._util.atomic import json_safe
from graft._version import __version__
from graft.backbones.preprocess import Preprocessing, Tiled
from graft.backbones.spec import is_joined
from graft.data.folder import VAL_SPLIT
from graft.errors import GraftError
from graft.run.files import MODEL_JSON

FORMAT = 1
MARKER = {"written_by": "graft"}  # what makes a folder a graft run (graft.run.guard.check_out)
_GRAFT_KEYS = {"format", "graft_version", "classes", "backbone", "head"}  # before the marker

# What a run's model.json may say: bounds that keep a tampered file from building a nonsense
# network or allocating gigabytes before any check (a 30000-pixel crop is 10.8 GB a batch).
SIZE_RANGE = (16, 4096)  # preprocessing size (the square the network sees)
RESIZE_RANGE = (16, 8192)  # the shorter side before the crop
MAX_WIDTH = 1 << 20  # a head layer's inputs or outputs
MAX_HEAD_PARAMETERS = 1 << 28  # 1 GiB of float32
MAX_TILES = 8  # backbones one concatenation joins
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")
_IDENTITY = ("spec", "arch", "weights_source", "weights_digest")  # what finds a backbone again
# What makes an edit of a run visible: model.json records the SHA-256 of model.safetensors
# (MODEL_DIGEST) and of its own content, every other key (RECORD_DIGEST). A run written before
# graft recorded them has neither and still loads.
MODEL_DIGEST = "model_sha256"
RECORD_DIGEST = "record_sha256"


@dataclass(frozen=True)
class BackboneRecord:
    """The backbone a run was trained on: how to find it again and the digest it must have.
    `stored`: the run holds its (trained) tensors; else it is the pretrained one, found again.
    `parts`: for a concatenation, each part's own record (the spec joins theirs with "+")."""

    spec: str
    arch: str
    weights_source: str
    weights_digest: str
    stored: bool = False
    parts: tuple[BackboneRecord, ...] = ()

    @classmethod
    def of(cls, source, stored: bool = False) -> BackboneRecord:
        """The record of a graft.backbones source (a ConcatSource's with its parts)."""
        return cls(source.spec, source.arch, source.weights.source, source.weights.digest, stored,
                   tuple(cls.from_json(p) for p in source.describe_parts()))

    @classmethod
    def from_json(cls, d: dict) -> BackboneRecord:
        return cls(*(d[k] for k in _IDENTITY), bool(d.get("stored", False)),
                   tuple(cls.from_json(p) for p in d.get("parts") or ()))

    def identity(self) -> dict:
        """spec, arch, weights_source and weights_digest: what a part records of itself."""
        return {k: getattr(self, k) for k in _IDENTITY}

    def to_json(self) -> dict:
        return {**self.identity(), "stored": self.stored,
                **({"parts": [p.identity() for p in self.parts]} if self.parts else {})}


@dataclass(frozen=True)
class HeadShape:
    """The trained top's shape: what rebuilds it (graft.heads.softmax.head_spec's document).
    `hidden`, `dropout`: None where not recorded (a linear head records neither)."""

    type: str  # "linear" or "mlp"
    in_features: int
    out_features: int
    hidden: tuple[int, ...] | None = None
    dropout: float | None = None

    @property
    def widths(self) -> list[int]:
        """Every layer's width, inputs first."""
        return [self.in_features, *(self.hidden or ()), self.out_features]

    @classmethod
    def from_json(cls, d: dict) -> HeadShape:
        hidden = d.get("hidden")
        return cls(d["type"], d["in_features"], d["out_features"],
                   None if hidden is None else tuple(hidden), d.get("dropout"))

    def to_json(self) -> dict:
        return {"type": self.type, "in_features": self.in_features, "out_features": self.out_features,
                **({"hidden": list(self.hidden)} if self.hidden is not None else {}),
                **({"dropout": self.dropout} if self.dropout is not None else {})}


@dataclass(frozen=True)
class RecipeSettings:
    """A trained part's settings as the recipe recorded them (training.head: the head's
    configuration and what cross-validation chose; training.finetune: fine-tuning's)."""

    settings: dict = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.settings.get("seed", 0) or 0)

    @property
    def solver(self) -> str | None:
        return self.settings.get("solver")

    @property
    def strength(self) -> float | None:
        return self.settings.get("strength")

    @property
    def epochs(self) -> int | None:
        return self.settings.get("epochs")

    @property
    def class_weight(self):
        return self.settings.get("class_weight")

    def config(self, config_class):
        """A `config_class` (a dataclass) with the recorded values of its fields, defaults elsewhere."""
        return config_class(**{f.name: self.settings[f.name] for f in fields(config_class) if f.name in self.settings})

    def to_json(self) -> dict:
        return dict(self.settings)


@dataclass(frozen=True)
class TrainingRecord:
    """How the recipe trained the run (graft.recipe.run_folder): what finds its photos again."""

    head: RecipeSettings | None = None
    finetune: RecipeSettings | None = None
    val_split: float = VAL_SPLIT  # the content-hash share of the photos held out for validation
    layout: str | None = None  # the photos' layout: "train/val", "folders", "labels:split", ...
    inner_split: float | None = None  # fine-tuning's early-stopping share of the training photos
    final: bool = False  # --final: the validation photos were trained on

    @classmethod
    def from_json(cls, d) -> TrainingRecord:
        d = d if isinstance(d, dict) else {}

        def recipe(v):
            return RecipeSettings(dict(v)) if isinstance(v, dict) and v else None

        val_split, inner = d.get("val_split", VAL_SPLIT), d.get("inner_split")
        return cls(recipe(d.get("head")), recipe(d.get("finetune")),
                   val_split if _is_finite_number(val_split) else VAL_SPLIT,
                   d["layout"] if isinstance(d.get("layout"), str) else None,
                   inner if _is_finite_number(inner) else None, bool(d.get("final")))

    def to_json(self) -> dict:
        return {**({"head": self.head.to_json()} if self.head is not None else {}),
                **({"finetune": self.finetune.to_json()} if self.finetune is not None else {}),
                "val_split": self.val_split, "layout": self.layout, "inner_split": self.inner_split,
                "final": self.final}


@dataclass(frozen=True)
class AugmentationRecord:
    """The augmentation the run trained with (graft.recipe.augmentation.describe; metrics.json
    holds the same): its preset, the head's cached views per photo, the pipeline's settings."""

    preset: str | None = None
    views: int | None = None
    key: str | None = None
    pipeline: dict | None = None  # {op name: hyperparameters}, in order

    @classmethod
    def from_json(cls, d) -> AugmentationRecord | None:
        if not isinstance(d, dict) or not d:
            return None
        views, pipeline = d.get("views"), d.get("pipeline")
        return cls(d.get("preset"), views if _is_whole_in(views, 0, 1 << 20) else None, d.get("key"),
                   pipeline if isinstance(pipeline, dict) else None)

    def to_json(self) -> dict:
        return {"preset": self.preset, "views": self.views, "key": self.key, "pipeline": self.pipeline}


@dataclass(frozen=True)
class RunRecord:
    """A run's model.json: its classes (logit i is classes[i]), the backbone and the crops it
    reads, the head's shape, and how the recipe trained it (None for a run saved without it)."""

    classes: tuple[str, ...]
    strategy: str | None
    backbone: BackboneRecord
    preprocessing: Preprocessing | Tiled
    head: HeadShape
    cut: int | None = None  # backbone stages kept when the last ones were replaced (Classifier.cut)
    training: TrainingRecord | None = None
    augmentation: AugmentationRecord | None = None
    graft_version: str | None = __version__  # of the graft that wrote it
    model_sha256: str | None = None  # of model.safetensors as training wrote it (None: a run of an older graft)

    @classmethod
    def from_json(cls, doc, where=MODEL_JSON) -> RunRecord:
        """The record of a model.json document; a one-line GraftError naming `where` if it is of
        another format or does not describe a run graft could have written."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
            raise GraftError(f"{where} has format {got}, this graft reads format {FORMAT}")
        problem = record_problem(doc)
        if problem:
            raise GraftError(f"{where} is not a valid graft run: {problem}; it was altered or damaged: "
                             f"train the run again or restore its files")
        if RECORD_DIGEST in doc and doc[RECORD_DIGEST] != content_digest(doc):
            raise GraftError(f"{where} was changed after training (its content is not what graft recorded: "
                             f"classes, preprocessing or another entry was edited); graft does not use an "
                             f"edited run: train it again or restore its files")
        training = doc.get("training")
        return cls(tuple(doc["classes"]), doc.get("strategy"), BackboneRecord.from_json(doc["backbone"]),
                   Preprocessing.from_json(doc["preprocessing"]), HeadShape.from_json(doc["head"]), doc.get("cut"),
                   None if training is None else TrainingRecord.from_json(training),
                   AugmentationRecord.from_json(doc.get("augmentation")), doc.get("graft_version"),
                   doc.get(MODEL_DIGEST))

    def to_json(self) -> dict:
        """model.json's document. The recipe records `training` and `augmentation` together
        (augmentation null when none was used); a run saved without them has neither."""
        recipe = {} if self.training is None else {
            "training": self.training.to_json(),
            "augmentation": None if self.augmentation is None else self.augmentation.to_json()}
        doc = {**MARKER, "format": FORMAT, "graft_version": self.graft_version, "classes": list(self.classes),
               "strategy": self.strategy, "backbone": self.backbone.to_json(),
               "preprocessing": self.preprocessing.to_json(), "head": self.head.to_json(), "cut": self.cut,
               **recipe, **({MODEL_DIGEST: self.model_sha256} if self.model_sha256 is not None else {})}
        return {**doc, RECORD_DIGEST: content_digest(doc)}


def content_digest(doc: dict) -> str:
    """SHA-256 of a model.json document's content, its own RECORD_DIGEST left out: canonical JSON
    (sorted keys, no spaces), so the same values give the same digest however they were laid out."""
    body = {k: v for k, v in doc.items() if k != RECORD_DIGEST}
    text = json.dumps(json_safe(body), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def written_by_graft(doc) -> bool:
    """A model.json document graft wrote (its marker; before the marker, graft's own keys),
    valid or not: a damaged run is still graft's to replace."""
    return isinstance(doc, dict) and (doc.get("written_by") == MARKER["written_by"] or _GRAFT_KEYS <= doc.keys())


# --- the checks ------------------------------------------------------------------------------------

def _is_whole_in(v, lo, hi) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def record_problem(doc: dict) -> str | None:
    """What is wrong with a run description (model.json), in a few words, or None. Checked
    wherever a run is read (RunRecord.from_json): predict, evaluate, export, serve, the Predictor."""
    return (_classes_problem(doc.get("classes")) or _backbone_problem(doc.get("backbone"))
            or _tiles_problem(doc.get("preprocessing"), doc["backbone"])
            or _head_problem(doc.get("head"), len(doc["classes"]))
            or (f'"cut" is {doc.get("cut")!r}, not a whole number'
                if doc.get("cut") is not None and not _is_whole_in(doc.get("cut"), 0, 1000) else None)
            or _digests_problem(doc))


def _digests_problem(doc: dict) -> str | None:
    for key in (MODEL_DIGEST, RECORD_DIGEST):
        v = doc.get(key)
        if key in doc and not (isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)):
            return f'"{key}" is not a SHA-256 digest'
    return None


def _classes_problem(classes) -> str | None:
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        return '"classes" is not a list of class names'
    if len(set(classes)) != len(classes):
        return '"classes" names a class twice'
    return None


def _has_identity(d) -> bool:
    return isinstance(d, dict) and all(isinstance(d.get(k), str) for k in _IDENTITY)


def _backbone_problem(bb) -> str | None:
    if not _has_identity(bb):
        return 'no "backbone" with its spec, arch, weights_source and weights_digest'
    if not isinstance(bb.get("stored", False), bool):
        return '"backbone"."stored" is not true or false'
    parts = bb.get("parts")
    if parts is not None and not (isinstance(parts, list) and len(parts) >= 2 and all(
            _has_identity(q) and "parts" not in q and not is_joined(q["spec"]) for q in parts)):
        return ('"backbone"."parts" is not a list of two or more single backbones with their spec, arch and '
                'weights_digest')
    return None


def _tiles_problem(pre, bb: dict) -> str | None:
    """The preprocessing: one plain entry, or for a concatenation one tile per part."""
    if not isinstance(pre, dict):
        return 'no "preprocessing"'
    parts, tiles = bb.get("parts"), pre.get("tiles")
    if "tiles" in pre and not isinstance(tiles, list):
        return 'preprocessing "tiles" is not a list'
    if (parts is None) != (tiles is None) or (parts is not None and (
            not isinstance(tiles, list) or len(tiles) != len(parts) or bb.get("stored"))):
        return 'the "backbone" parts and the "preprocessing" tiles do not match'
    if tiles is None:
        return preprocessing_problem(pre)
    if len(tiles) > MAX_TILES:
        return f'preprocessing has {len(tiles)} tiles, over {MAX_TILES}'
    for tile in tiles:
        problem = (preprocessing_problem(tile) if isinstance(tile, dict) and "tiles" not in tile
                   else 'a preprocessing tile is not one plain preprocessing')
        if problem:
            return problem
    if len({t["size"] % 2 for t in tiles}) > 1:
        return 'preprocessing tiles have sizes of both parities'
    return None


def preprocessing_problem(pre: dict) -> str | None:
    """What is wrong with one (untiled) preprocessing entry, or None."""
    if not _is_whole_in(pre.get("size"), *SIZE_RANGE):
        return f'preprocessing "size" is {pre.get("size")!r}, not a whole number in {SIZE_RANGE[0]}..{SIZE_RANGE[1]}'
    if not _is_whole_in(pre.get("resize"), *RESIZE_RANGE):
        return (f'preprocessing "resize" is {pre.get("resize")!r}, not a whole number in '
                f'{RESIZE_RANGE[0]}..{RESIZE_RANGE[1]}')
    if pre.get("interpolation") not in INTERPOLATIONS:
        return f'preprocessing "interpolation" is {pre.get("interpolation")!r}, not one of {", ".join(INTERPOLATIONS)}'
    for key in ("mean", "std"):
        v = pre.get(key)
        if not isinstance(v, list) or len(v) != 3 or not all(_is_finite_number(x) for x in v) or (
                key == "std" and not all(x > 0 for x in v)):
            return f'preprocessing "{key}" is not three {"positive " if key == "std" else ""}numbers'
    return None


def _head_problem(head, n_classes: int) -> str | None:
    if not isinstance(head, dict):
        return 'no "head" (the shape of the trained top)'
    hidden = head.get("hidden", [])
    if head.get("type") not in ("linear", "mlp") or not isinstance(hidden, list):
        return f'"head" has type {head.get("type")!r}, not linear or mlp'
    widths = [head.get("in_features"), *hidden, head.get("out_features")]
    if not all(_is_whole_in(w, 1, MAX_WIDTH) for w in widths):
        return f'"head" has layer widths {widths}, not whole numbers in 1..{MAX_WIDTH}'
    if sum((a + 1) * b for a, b in zip(widths, widths[1:])) > MAX_HEAD_PARAMETERS:
        return f'"head" has layer widths {widths}: over {MAX_HEAD_PARAMETERS} parameters'
    if not (_is_finite_number(head.get("dropout", 0.0)) and 0 <= head.get("dropout", 0.0) < 1):
        return f'"head" has dropout {head.get("dropout")!r}, not a number in [0, 1)'
    if widths[-1] != n_classes:
        return f'"classes" lists {n_classes} classes but the head has {widths[-1]} outputs'
    return None
