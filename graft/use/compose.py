"""A head run's ONNX export, joined from parts instead of traced: so `graft train` leaves a run
that `graft predict` answers in about a second, with no export step.

A head run's network is the pretrained backbone, unchanged, plus a small head. The feature cache
already holds that backbone as an ONNX graph (graft.backbones.engine, checked against torch when
it was made), so tracing it again with torch (`graft export`: 10-20 s) is wasted work. Here the
graph is assembled with the onnx package from three parts:

    image (N, H, W, 3) uint8 -> [normalise] -> [the cached backbone graph] -> features
    features -> [head: Gemm (+ Relu, Gemm ...)] -> logits -> Softmax -> probabilities
    features -> [unit rows, MatMul with the reference, TopK] -> novelty   (calibrated runs)

each op the very float operation `graft.use.export.Exported` runs (tests/use/test_compose.py
holds the two within the export tolerance), with the same inputs, outputs, metadata, export.json
and client, so the Predictor, the ONNX client and `graft serve` cannot tell them apart.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from graft._util.digest import sha256_file
from graft.backbones.preprocess import Preprocessing

log = logging.getLogger("graft")



def can_compose(record) -> bool:
    """A run whose network is a pretrained backbone, whole and plain, under a new head."""
    return (record.strategy == "head" and record.cut is None and not record.backbone.stored
            and isinstance(record.preprocessing, Preprocessing))


def composed_model(backbone_onnx, pre: Preprocessing, head: list[np.ndarray], novelty=None):
    """The ModelProto: uint8 NHWC crops -> probabilities, logits[, novelty].
    `head`: the run's head tensors in order (weight, bias, weight, bias, ...: Linear layers with a
    Relu between); `novelty`: (unit reference rows (R, D) float32, k) or None.

    The backbone graph is spliced in place (its input fed by the normalisation, its output read by
    the head) rather than through onnx.compose.merge_models, whose checker and copies cost more
    than the rest of `graft train`'s warm rerun; every name added starts with "graft/", which no
    traced graph uses (checked)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(backbone_onnx))
    graph = model.graph
    (inp,), (feats,) = graph.input, graph.output
    if any(n.startswith(P) for node in graph.node for n in (*node.input, *node.output)):
        raise ValueError(f"{backbone_onnx} already uses names starting with {P!r}")
    h, w = pre.shape
    mean, inv_std = _constants(pre)
    first = [
        helper.make_node("Transpose", ["image"], [P + "nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", [P + "nchw"], [P + "x"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Sub", [P + "x", P + "mean"], [P + "centred"]),
        helper.make_node("Mul", [P + "centred", P + "inv_std"], [inp.name]),
    ]
    nodes, inits, outputs = _top(head, novelty, feats.name)
    inits += [numpy_helper.from_array(mean, P + "mean"), numpy_helper.from_array(inv_std, P + "inv_std")]
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend([*first, *body, *nodes])
    graph.initializer.extend(inits)
    del graph.input[:], graph.output[:]
    graph.input.append(helper.make_tensor_value_info("image", onnx.TensorProto.UINT8, ["batch", h, w, 3]))
    graph.output.extend(outputs)
    return model


P = "graft/"  # the prefix of every name the composition adds


def _constants(pre: Preprocessing):
    """Preprocessing.normalize_constants without torch: mean * 255 and 1 / (std * 255), float32
    exactly as torch computes them there (float32 tensors)."""
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(1, 3, 1, 1) * np.float32(255.0)
    inv_std = np.float32(1.0) / (np.asarray(pre.std, dtype=np.float32).reshape(1, 3, 1, 1) * np.float32(255.0))
    return mean, inv_std


def _top(head: list[np.ndarray], novelty, features: str):
    """-> (nodes, initializers, outputs) of the head (and novelty) over `features` (N, D)."""
    import onnx
    from onnx import helper, numpy_helper

    nodes, inits, x = [], [], features
    for i in range(0, len(head), 2):
        w, b = (np.ascontiguousarray(t, dtype=np.float32) for t in head[i:i + 2])
        inits += [numpy_helper.from_array(w, f"{P}w{i}"), numpy_helper.from_array(b, f"{P}b{i}")]
        y = "logits" if i + 2 == len(head) else f"{P}hidden{i}"
        nodes.append(helper.make_node("Gemm", [x, f"{P}w{i}", f"{P}b{i}"], [y], transB=1))
        if y != "logits":
            nodes.append(helper.make_node("Relu", [y], [f"{P}relu{i}"]))
            y = f"{P}relu{i}"
        x = y
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    n_classes = int(head[-1].shape[0])
    outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["batch", n_classes])
               for n in ("probabilities", "logits")]
    if novelty is not None:
        reference, k = novelty
        inits += [numpy_helper.from_array(np.ascontiguousarray(reference.T, dtype=np.float32), P + "reference_t"),
                  numpy_helper.from_array(np.array(1e-12, np.float32), P + "eps"),
                  numpy_helper.from_array(np.array(1.0, np.float32), P + "one"),
                  numpy_helper.from_array(np.array([k], np.int64), P + "k"),
                  numpy_helper.from_array(np.array(k - 1, np.int64), P + "last")]
        nodes += [  # graft.use.calibrate.Novelty.distance: 1 - the k-th largest cosine similarity
            helper.make_node("ReduceL2", [features], [P + "norm"], axes=[1], keepdims=1),
            helper.make_node("Max", [P + "norm", P + "eps"], [P + "norm_safe"]),
            helper.make_node("Div", [features, P + "norm_safe"], [P + "unit"]),
            helper.make_node("MatMul", [P + "unit", P + "reference_t"], [P + "similarity"]),
            helper.make_node("TopK", [P + "similarity", P + "k"], [P + "nearest", P + "nearest_at"], axis=1),
            helper.make_node("Gather", [P + "nearest", P + "last"], [P + "kth"], axis=1),
            helper.make_node("Sub", [P + "one", P + "kth"], ["novelty"]),
        ]
        outputs.append(helper.make_tensor_value_info("novelty", onnx.TensorProto.FLOAT, ["batch"]))
    return nodes, inits, outputs


def head_tensors(run_dir, record) -> list[np.ndarray]:
    """The run's head Linear layers' (weight, bias) in order, from model.safetensors (no torch)."""
    from safetensors.numpy import load_file

    from graft.run.files import MODEL_TENSORS

    tensors = load_file(str(Path(run_dir) / MODEL_TENSORS))
    if record.head.to_json().get("type") == "linear":
        return [tensors["head.weight"], tensors["head.bias"]]
    layers = sorted({int(k.split(".")[1]) for k in tensors if k.startswith("head.") and k.endswith(".weight")})
    return [t for i in layers for t in (tensors[f"head.{i}.weight"], tensors[f"head.{i}.bias"])]


def backbone_graph(source, cache_root) -> Path | None:
    """The cached backbone graph of `source` (graft.backbones.engine's file), when one is there."""
    from graft.backbones.engine import onnx_path

    path = onnx_path(source, cache_root)
    return path if path.is_file() else None


def graph_entry(path: Path) -> dict:
    return {"path": str(path), "sha256": sha256_file(path)}


def write_composed(run_dir, backbone_onnx: Path) -> Path:
    """Write RUN/model.onnx (+ export.json, predict_onnx.py) joined from `backbone_onnx` and the
    run's head, with its current calibration; the same files `graft export RUN` writes.

    The joined file is also kept beside the graph (`joined-<inputs>-<content>.onnx`, named so
    `graft cache prune` knows it for graft's, its content digest in the name checked on reuse): a
    warm rerun, whose head comes back identical, copies it instead of importing the onnx package
    (0.6-0.8 s of a second's rerun, most of it ml_dtypes)."""
    import hashlib
    import shutil

    from graft._util.atomic import atomic_path
    from graft.run.files import ONNX_MODEL
    from graft.run.store import read_record
    from graft.use.export import check_targets, describe, export_calibration, record_export, stamp

    run_dir, backbone_onnx = Path(run_dir), Path(backbone_onnx)
    record = read_record(run_dir)
    out = check_targets(run_dir, run_dir / ONNX_MODEL, "the export", None)
    cal, novelty = export_calibration(run_dir, list(record.classes))
    graph = graph_entry(backbone_onnx)  # hashed before it is read: what is recorded is what was joined
    near = None if novelty is None else (novelty.reference.float().numpy(),
                                        min(int(novelty.k), novelty.reference.shape[0]))
    head = head_tensors(run_dir, record)
    info = describe(run_dir, record, cal, novelty is not None)
    h = hashlib.sha256(json.dumps({"graph": graph["sha256"], "info": info, "format": JOINED}, sort_keys=True).encode())
    for t in head + ([] if near is None else [near[0], np.array(near[1])]):
        h.update(np.ascontiguousarray(t, dtype=np.float32).tobytes())
    kept = _kept_joined(backbone_onnx.parent, h.hexdigest()[:16])
    with atomic_path(out) as tmp:
        if kept is not None:
            shutil.copyfile(kept, tmp)
        else:
            import onnx

            proto = composed_model(backbone_onnx, record.preprocessing, head, near)
            stamp(proto, info)
            onnx.save(proto, str(tmp))
            _keep_joined(backbone_onnx.parent, h.hexdigest()[:16], tmp)
    record_export(run_dir, out, "onnx", info, {"made": "joined from the cached backbone graph and the run's head",
                                               "backbone_graph": graph})
    return out


JOINED = 1  # version of what composed_model writes: in the kept files' key


def _kept_joined(folder: Path, key: str) -> Path | None:
    """A joined file kept for these inputs whose content still has the digest its name says."""
    from graft.cache.layout import touch

    for path in sorted(folder.glob(f"joined-{key}-*.onnx")):
        if path.is_file() and not path.is_symlink() and sha256_file(path)[:16] == path.stem.rsplit("-", 1)[-1]:
            touch(path)
            return path
    return None


def _keep_joined(folder: Path, key: str, made: Path) -> None:
    """Best effort: a cache that cannot be written costs the joining next time."""
    import shutil

    from graft._util.atomic import atomic_path

    try:
        with atomic_path(folder / f"joined-{key}-{sha256_file(made)[:16]}.onnx") as tmp:
            shutil.copyfile(made, tmp)
    except Exception as e:  # a nicety: never fail the export over it
        log.info("could not keep the joined export in %s: %s", folder, e)


def refresh_export(run_dir) -> str | None:
    """After `graft calibrate`: the run's ONNX export made again with the new calibration (its
    novelty check and thresholds), so `graft predict --reject auto` stays on the fast engine.
    Joined again from the same backbone graph when it is still in the cache unchanged, else
    traced (graft export). Only an export graft made of this very model is refreshed. -> how
    ("joined" / "traced"), or None when there was none to refresh."""
    from graft.run.files import EXPORT_JSON, MODEL_TENSORS, ONNX_MODEL
    from graft.use.export import export_run

    run_dir = Path(run_dir)
    try:
        doc = json.loads((run_dir / EXPORT_JSON).read_text())
        entry = doc["files"][ONNX_MODEL]
        ours = (doc.get("model_sha256") == sha256_file(run_dir / MODEL_TENSORS)
                and entry.get("sha256") == sha256_file(run_dir / ONNX_MODEL))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not ours:
        return None
    graph = entry.get("backbone_graph") or {}
    path = Path(str(graph.get("path", "")))
    if graph and path.is_file() and sha256_file(path) == graph.get("sha256"):
        write_composed(run_dir, path)
        return "joined"
    export_run(run_dir, "onnx")
    return "traced"
