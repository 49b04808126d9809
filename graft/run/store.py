"""The run folder on disk: writing a trained classifier, reading it back, and finding its
backbone again.

A run folder holds model.json (graft.run.record.RunRecord: classes, backbone identity and weights
digest, preprocessing, strategy, head shape) and model.safetensors (the trained tensors), written
atomically. For the head strategy only the head is stored: the frozen backbone is exactly the
pretrained one, which is found again from its spec and must hash to the recorded digest, so a
5 KB head does not drag an 18 MB copy of unchanged weights along. Strategies that train the
backbone store it whole.

Reading a run's record (`read_record`) imports no torch: graft.use.predictor runs a fresh ONNX
export of the run without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from graft._util import limits
from graft._util.atomic import read_json, write_json, write_safetensors
from graft._util.files import open_regular
from graft.backbones.preprocess import Preprocessing, Tiled
from graft.errors import GraftError
from graft.run.files import MODEL_JSON, MODEL_TENSORS
from graft.run.record import MARKER, AugmentationRecord, BackboneRecord, HeadShape, RunRecord, TrainingRecord

if TYPE_CHECKING:  # the network's modules import torch: loaded where a network is built
    from torch import nn

    from graft.backbones import BackboneSource
    from graft.finetune.classifier import Classifier


def save_run(run_dir, *, head: nn.Module, classes: list[str], source: BackboneSource, strategy: str,
             backbone: nn.Module | None = None, cut: int | None = None, training: dict | None = None,
             augmentation: dict | None = None) -> RunRecord:
    """Write model.safetensors then model.json (the json last: it is what marks a run complete).
    `backbone`: the trained backbone, stored whole (None: the pretrained one, found again).
    `training`, `augmentation`: how the recipe trained it (graft.run.record.TrainingRecord)."""
    from graft.heads.softmax import head_spec

    run_dir = Path(run_dir)
    tensors = {f"head.{k}": v.detach().contiguous() for k, v in head.state_dict().items()}
    if backbone is not None:
        tensors.update({f"backbone.{k}": v.detach().contiguous() for k, v in backbone.state_dict().items()})
    digest = write_safetensors(run_dir / MODEL_TENSORS, tensors, metadata=dict(MARKER))  # graft's, before model.json
    record = RunRecord(tuple(classes), strategy, BackboneRecord.of(source, stored=backbone is not None),
                       source.preprocessing, HeadShape.from_json(head_spec(head)), cut,
                       None if training is None else TrainingRecord.from_json(training),
                       AugmentationRecord.from_json(augmentation), model_sha256=digest)
    write_json(run_dir / MODEL_JSON, record.to_json())
    return record


def read_record(run_dir) -> RunRecord:
    """The run's model.json, checked (RunRecord.from_json: its own digest too), with
    model.safetensors checked against it, tensor names and shapes, then its bytes against the
    digest model.json recorded; a one-line GraftError for a folder that is not a run, a damaged
    one or one changed after training. Every command reads a run through here, on either engine."""
    run_dir = Path(run_dir)
    path = run_dir / MODEL_JSON
    if not run_dir.exists() and not run_dir.is_symlink():  # a typo, most likely: not "not a run"
        raise GraftError(f"run folder not found: {run_dir} (give the folder `graft train --out` wrote)")
    doc = read_json(path, missing=f"{run_dir} is not a graft run (no {MODEL_JSON}); train one with `graft train`")
    record = RunRecord.from_json(doc, where=path)
    _check_model_file(run_dir / MODEL_TENSORS, record)
    if record.model_sha256 is not None and tensors_digest(run_dir) != record.model_sha256:
        raise GraftError(f"{run_dir / MODEL_TENSORS} was changed after training (its SHA-256 is not the one "
                         f"{MODEL_JSON} recorded); graft does not use an edited run: train it again or restore "
                         f"its files")
    return record


_DIGESTS: dict[tuple, str] = {}  # (path, device, inode, size, mtime, ctime) -> SHA-256: each file hashed once


def tensors_digest(run_dir) -> str:
    """SHA-256 of the run's model.safetensors, hashed once per process for one state of the file
    (a write changes its ctime, which no one can set back): a command reads its run several times."""
    path = Path(run_dir) / MODEL_TENSORS
    try:
        with open_regular(path) as f:
            st = os.fstat(f.fileno())
            key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if key not in _DIGESTS:
                h = hashlib.sha256()
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
                if len(_DIGESTS) > 64:
                    _DIGESTS.clear()
                _DIGESTS[key] = h.hexdigest()
    except OSError as e:
        raise GraftError(f"cannot read {path}: {e.strerror or e}") from None
    return _DIGESTS[key]


def load_run(run_dir, *, weights=None) -> Classifier:
    """Rebuild the classifier of a run folder with no other input (its record: `model.record`)."""
    from safetensors.torch import load_file

    from graft.backbones import rebuild_backbone
    from graft.finetune.classifier import Classifier
    from graft.heads.softmax import head_from_spec

    run_dir = Path(run_dir)
    record = read_record(run_dir)
    path = run_dir / MODEL_TENSORS
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as e:
        raise GraftError(f"cannot read {path}: {e}") from None
    if record.backbone.stored:
        backbone = rebuild_backbone(record.backbone.identity(), record.preprocessing)
        _load_state(path, backbone, _prefixed(tensors, "backbone."), "backbone")
    else:
        backbone = run_backbone_source(record.backbone, record.preprocessing, weights).build()
    head = head_from_spec(record.head.to_json())
    _load_state(path, head, _prefixed(tensors, "head."), "head")
    model = Classifier(backbone, head, list(record.classes), cut=record.cut)
    model.eval()
    model.record = record
    return model


def load_head(run_dir) -> nn.Module:
    """Just the trained top of a run (for head runs, scoring cached features needs nothing else)."""
    from safetensors import safe_open

    from graft.heads.softmax import head_from_spec

    record = read_record(run_dir)
    head = head_from_spec(record.head.to_json())
    path = Path(run_dir) / MODEL_TENSORS
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k[5:]: f.get_tensor(k) for k in f.keys() if k.startswith("head.")}
    except Exception as e:
        raise GraftError(f"cannot read {path}: {e}") from None
    _load_state(path, head, state, "head")
    return head.eval()


# --- the tensors model.json declares ---------------------------------------------------------------

def head_tensor_shapes(head: HeadShape | dict) -> dict[str, list[int]]:
    """The tensors graft.heads.softmax.make_head's module for `head` (a HeadShape or its JSON)
    has, as model.safetensors names them (`head.` + its state_dict keys) with their shapes;
    computed here without torch."""
    widths = (HeadShape.from_json(head) if isinstance(head, dict) else head).widths
    if len(widths) == 2:  # nn.Linear
        return {"head.weight": [widths[1], widths[0]], "head.bias": [widths[1]]}
    shapes = {}  # nn.Sequential of (Dropout, Linear, ReLU) per hidden layer, then Dropout, Linear
    for j, (a, b) in enumerate(zip(widths, widths[1:])):
        shapes[f"head.{3 * j + 1}.weight"], shapes[f"head.{3 * j + 1}.bias"] = [b, a], [b]
    return shapes


def _tensor_shapes(path: Path) -> dict[str, list]:
    """{name: shape} of a safetensors file, from its header alone (no torch)."""
    header = _header(path)
    return {k: v.get("shape") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def tensors_written_by_graft(path: Path) -> bool:
    """Whether a model.safetensors carries graft's marker in its metadata: what a run killed after
    its tensors and before its model.json leaves, which --resume may write over."""
    try:
        marks = _header(Path(path)).get("__metadata__")
    except GraftError:
        return False
    return isinstance(marks, dict) and marks.get("written_by") == MARKER["written_by"]


def _header(path: Path) -> dict:
    try:
        with open_regular(path) as f:
            raw = f.read(8)
            n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
            if not 0 < n <= 100_000_000:
                raise ValueError("not a safetensors file")
            header = limits.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("not a safetensors file")
        return header
    except (OSError, ValueError) as e:
        raise GraftError(f"cannot read {path}: {e}") from None


def _check_model_file(path: Path, record: RunRecord) -> None:
    """model.safetensors holds exactly what model.json declares: the head it describes, tensor for
    tensor and shape for shape, and the backbone's tensors only when the run stored it (a
    head-only run's backbone is the pretrained one: tensors of a fine-tuned one there would be
    either used silently or ignored silently). Reads the file's header only (no torch)."""
    shapes = _tensor_shapes(path)
    stored = record.backbone.stored
    foreign = sorted(k for k in shapes if not (k.startswith("head.") or (stored and k.startswith("backbone."))))
    want = head_tensor_shapes(record.head)
    got = {k: v for k, v in shapes.items() if k.startswith("head.")}
    problem = None
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        undeclared = " (backbone tensors in a run whose model.json says the backbone is not stored)" if any(
            k.startswith("backbone.") for k in foreign) else ""
        problem = f"it holds tensors model.json does not declare: {shown}{undeclared}"
    elif stored and not any(k.startswith("backbone.") for k in shapes):
        problem = "model.json says the backbone is stored, but it holds no backbone tensor"
    elif got != want:
        wrong = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
        k = wrong[0]
        problem = (f"the head's tensors do not fit the head it describes ({k}: "
                   f"{'shape ' + str(got[k]) if k in got else 'missing'}, model.json's head "
                   f"{'needs ' + str(want[k]) if k in want else 'has no such tensor'})")
    if problem:
        raise GraftError(f"{path} does not match model.json: {problem}; the run was altered or damaged: "
                         f"train it again or restore its files")


def _load_state(path: Path, module: nn.Module, state: dict, what: str) -> None:
    """module.load_state_dict(state), every key and shape checked; a mismatch is one GraftError line."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        why = " ".join(str(e).split())
        why = why if len(why) <= 400 else why[:400] + "..."
        raise GraftError(f"{path} does not match model.json: the {what}'s tensors do not fit the network "
                         f"it describes ({why}); the run was altered or damaged: train it again or restore "
                         f"its files") from None


def _prefixed(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


# --- the backbone a head-only run was trained on, found again ----------------------------------------

def run_backbone_source(backbone: BackboneRecord, preprocessing: Preprocessing | Tiled | None = None,
                        weights=None):
    """The backbone a head-only run was trained on (a graft.backbones source), every part found
    again as a single backbone is and verified against its recorded digest. `preprocessing`: the
    crops the run recorded (RunRecord.preprocessing), which stay the run's own."""
    from graft.backbones import join_sources

    parts = backbone.parts or (backbone,)  # model.json lists a concatenation's parts; a single backbone is its own
    if weights is not None and len(parts) > 1:
        raise GraftError(f"--weights names one file, but this run concatenates {backbone.spec}: "
                         f"each part's weights are found as training found them")
    source = join_sources(backbone.spec, [_found_again(part, weights) for part in parts])
    if preprocessing is not None and preprocessing != source.preprocessing:
        if source.frozen_only:  # a concatenation's tiles are its parts' crops: each network would read another's
            raise GraftError(f"the run's preprocessing tiles in model.json are not its parts' ({backbone.spec}): "
                             f"the run was altered or damaged; train it again or restore its files")
        # the network's pretrained configuration changed since training (a timm or torchvision
        # upgrade, same weights): the run's own crops stay the truth, for features and predictions
        source = _with_preprocessing(source, preprocessing)
    return source


def _found_again(backbone: BackboneRecord, weights=None):
    """The single backbone `backbone` records, found as training found it (or in `weights`) and
    refused unless its weights hash to the recorded digest."""
    from graft.backbones import resolve_backbone

    source = resolve_backbone(_recorded_spec(backbone), weights or _recorded_weights(backbone))
    if source.weights.digest != backbone.weights_digest:
        raise GraftError(
            f"the backbone weights found now ({source.weights.source}, SHA-256 "
            f"{source.weights.digest[:12]}...) are not the ones this run was trained on "
            f"({backbone.weights_digest[:12]}...); pass the original file with --weights"
        )
    return source


def _recorded_spec(backbone: BackboneRecord) -> str:
    """The spec to find a single run's backbone by: "default" as it was when the run was trained
    (the alias moved from lite0 to lite1; the recorded architecture says which it was)."""
    from graft.backbones import BUNDLED

    if backbone.spec != "default":
        return backbone.spec
    return next((name for name, entry in BUNDLED.items() if entry[0] == backbone.arch), "default")


def _recorded_weights(backbone: BackboneRecord):
    """A --weights file recorded in the run; a bundled backbone's packaged file (default, lite0,
    lite1, lite2) is found afresh, so a run does not pin one site-packages path (the digest
    check still proves it is the same file)."""
    from graft.backbones import BUNDLED

    packaged = backbone.spec == "default" or backbone.spec in BUNDLED
    return None if packaged else backbone.weights_source


def _with_preprocessing(source, pre: Preprocessing):
    """`source`, whose built network carries `pre` (what the run was trained on) as its preprocessing."""
    build = source._build

    def rebuilt():
        network = build()
        network.preprocessing = pre
        return network

    return dataclasses.replace(source, preprocessing=pre, _build=rebuilt, _built=None)
