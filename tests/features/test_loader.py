"""The augmented training loader: seeding that ignores workers, decode-once cache, batched ops."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_photo, make_photo_folder
from PIL import Image

from graft.augment import RandomResizedCrop, build
from graft.backbones import DEFAULT_PREPROCESSING as PRE
from graft.data import scan_photos
from graft.data.decoded import DecodedCache, reduction_for
from graft.features.loader import AugmentedLoad, split_for_device, train_loader


@pytest.fixture
def samples(tmp_path):
    make_photo_folder(tmp_path / "p", per_class=6)
    data = scan_photos(tmp_path / "p", val_split=0.01)
    return data.train + data.val


def _epoch(loader, epoch):
    loader.batch_sampler.sampler.set_epoch(epoch)
    out = {}
    for idx, batch, errors in loader:
        assert not errors
        for i, t in zip(idx, batch):
            out[i] = t.clone()
    return out


def test_draws_do_not_depend_on_worker_count(samples):
    pipe = build("heavy", size=64)
    a = _epoch(train_loader(samples, pipe, PRE, seed=3, batch_size=4, workers=0), 1)
    b = _epoch(train_loader(samples, pipe, PRE, seed=3, batch_size=4, workers=2), 1)
    assert a.keys() == b.keys() == set(range(len(samples)))
    assert all(torch.equal(a[i], b[i]) for i in a)
    assert all(t.dtype == torch.uint8 and t.shape == (3, 64, 64) for t in a.values())


def test_epochs_and_images_get_their_own_draws(tmp_path):
    img = make_photo(np.random.default_rng(0), "red", size=(120, 90))
    for i in range(4):  # four copies of one photo: same pixels, different files
        img.save(tmp_path / f"copy{i}.png")
    from graft.data import Sample
    from graft.data.folder import file_digest

    copies = [Sample(tmp_path / f"copy{i}.png", 0, file_digest(tmp_path / f"copy{i}.png"), (120, 90)) for i in range(4)]
    loader = train_loader(copies, build("heavy", size=64), PRE, seed=0, batch_size=4, workers=2)
    e0, e1 = _epoch(loader, 0), _epoch(loader, 1)
    flat = [e0[i].flatten() for i in range(4)]
    assert all(not torch.equal(flat[i], flat[j]) for i in range(4) for j in range(i + 1, 4))
    assert not torch.equal(e0[0], e1[0])


def test_decoded_cache_gives_the_same_pixels_and_survives_damage(samples, tmp_path):
    pipe = build("standard", size=64)
    plain = AugmentedLoad(pipe, PRE)
    cache = DecodedCache(tmp_path / "decoded")
    cached = AugmentedLoad(pipe, PRE, cache)
    s = samples[0]
    item = (s.path, s.size, 123, s.digest)
    first = cached(item)  # decodes and stores
    entries = list((tmp_path / "decoded").rglob("*.npy"))
    assert len(entries) == 1
    assert torch.equal(first, plain(item))  # a small photo is stored at full size: same result
    assert torch.equal(cached(item), first)  # read back from the stored pixels
    entries[0].write_bytes(b"garbage")
    assert torch.equal(cached(item), first)  # damaged entry: decoded again, rewritten
    assert np.load(entries[0]).shape[2] == 3


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files in /proc")
def test_decoded_cache_keeps_its_maps_without_holding_files_open(tmp_path):
    # A persistent worker keeps every photo it served mapped; numpy's memmap would hold a file
    # descriptor per map and run into the open-file limit (1024 by default) on a few thousand photos.
    photo = tmp_path / "p.png"
    Image.new("RGB", (12, 9), (10, 20, 30)).save(photo)
    cache = DecodedCache(tmp_path / "decoded")
    digests = [f"{i:064x}" for i in range(300)]
    for d in digests:
        cache.load(photo, d, (12, 9), 1)  # decodes and stores
    before = len(os.listdir("/proc/self/fd"))
    arrays = [cache.load(photo, d, (12, 9), 1) for d in digests]  # maps each stored entry
    assert len(os.listdir("/proc/self/fd")) - before < 10
    assert len(cache._open) == 300 and all(a.shape == (9, 12, 3) and (a[0, 0] == (10, 20, 30)).all() for a in arrays)
    assert cache.load(photo, digests[0], (12, 9), 1) is arrays[0]  # unchanged entry: the same map


def test_big_jpeg_is_stored_at_a_dct_reduction_that_keeps_detail(tmp_path):
    crop = RandomResizedCrop(224, scale=(0.35, 1.0))
    assert reduction_for((2000, 1500), crop, (224, 224)) == 2  # smallest crop ~770 px: 1/2 keeps >= 224
    assert reduction_for((500, 375), crop, (224, 224)) == 1
    assert reduction_for((8000, 6000), RandomResizedCrop(224, scale=(1.0, 1.0)), (224, 224)) == 8
    big = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1500), (200, 30, 40)).save(big, quality=90)
    arr = DecodedCache(tmp_path / "d").load(big, "ab" * 32, (2000, 1500), 2)
    assert arr.shape == (750, 1000, 3)


def test_batched_colour_ops_draw_per_sample_and_ignore_batch_company(samples):
    _, batch_aug = split_for_device(build("heavy", size=64), 0, "cpu", "cpu")
    x = torch.full((3, 3, 64, 64), 128, dtype=torch.uint8)
    out = batch_aug(x, ["a", "b", "c"], epoch=0)
    assert not torch.equal(out[0], out[1]) and not torch.equal(out[1], out[2])
    alone = batch_aug(x[1:2], ["b"], epoch=0)
    assert torch.equal(alone[0], out[1])  # same image, same epoch: same draw whatever the batch
    assert not torch.equal(batch_aug(x[1:2], ["b"], epoch=1)[0], out[1])


def test_aug_device_cpu_augments_before_the_batch_moves_to_the_trainer(monkeypatch):
    # --aug-device cpu on a GPU machine used to run on the GPU: the batch was moved to the
    # trainer's device first. "meta" stands in for a trainer device that is not the CPU.
    from graft.augment import OPS

    seen = []
    for cls in (cls for cls in OPS.values() if cls.batchable):
        def recording(self, img, params, _transform=cls.transform):
            seen.append((self.name, img.device.type))
            return _transform(self, img, params)

        monkeypatch.setattr(cls, "transform", recording)
    pipe = build("heavy", "flip=1,jitter_p=1,rgb_shift_p=1", size=32)
    x = torch.arange(4 * 3 * 32 * 32).remainder(251).to(torch.uint8).view(4, 3, 32, 32)
    _, on_cpu = split_for_device(pipe, 0, "cpu", "meta")
    out = on_cpu(x, ["a", "b", "c", "d"], epoch=0)
    assert out.device.type == "meta" and out.shape == x.shape and out.dtype == torch.uint8
    assert {name for name, _ in seen} == {"flip", "color_jitter", "pca_color", "rgb_shift"}
    assert {device for _, device in seen} == {"cpu"}
    seen.clear()
    _, on_trainer = split_for_device(build("light", size=32), 0, "meta", "meta")  # "cuda": on the trainer
    on_trainer(x, ["a", "b", "c", "d"], epoch=0)
    assert seen and {device for _, device in seen} == {"meta"}


class _MarkingLoad:
    """The evaluation load, which also leaves a file behind when a worker decodes the first photo."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __call__(self, path):
        self.marker.touch()
        return PRE.load(path)


@pytest.mark.parametrize("workers", [1, None])
def test_photos_decode_while_the_network_is_built(tmp_path, workers):
    """A cold extraction starts decoding before it builds the backbone (and its onnxruntime
    session), so the two overlap: the build here waits for a decoded photo. workers=1: a decoding
    process; None (on a CPU): DecodeThenForward's threads, their first batches started at once."""
    import time

    from graft.backbones import load_backbone
    from graft.cache import FeatureCache
    from graft.features.extract import extract_features

    make_photo_folder(tmp_path / "p", per_class=10)
    paths = sorted((tmp_path / "p").glob("*/*.jpg"))
    marker = tmp_path / "decoded"

    def build():
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline, "no photo was decoded while the backbone was being built"
            time.sleep(0.05)
        return load_backbone()

    cache = FeatureCache(tmp_path / "cache", {"arch": "test-overlap"})
    feats, ok, stats = extract_features(build, [p.name for p in paths], paths, cache, load=_MarkingLoad(marker),
                                        batch_size=8, workers=workers, progress=False, engine="torch")
    assert ok.all() and stats.misses == len(paths) and np.abs(feats).max() > 0


@pytest.mark.parametrize("workers", [1, None])
def test_a_failing_build_stops_the_decoding(tmp_path, workers):
    """What decodes while the network is built (worker processes with --workers N; with none asked
    for on a CPU, DecodeThenForward's threads) must not outlive an extraction whose backbone
    cannot be built."""
    import multiprocessing
    import threading

    from graft.cache import FeatureCache
    from graft.errors import GraftError
    from graft.features.extract import extract_features

    make_photo_folder(tmp_path / "p", per_class=10)
    paths = sorted((tmp_path / "p").glob("*/*.jpg"))

    def fails():
        raise GraftError("no such backbone")

    cache = FeatureCache(tmp_path / "cache", {"arch": f"test-overlap-fails-{workers}"})
    with pytest.raises(GraftError, match="no such backbone"):
        extract_features(fails, [p.name for p in paths], paths, cache, load=PRE.load, batch_size=8, workers=workers,
                         progress=False)
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
    assert not [t for t in threading.enumerate() if t.name.startswith("graft-decode")]


def test_decoding_in_turns_gives_the_workers_batches_and_errors(tmp_path):
    """DecodeThenForward (threads, in turns with the forward pass) yields what the worker loader
    yields: the same indices, pixels and unreadable files, batch by batch."""
    from graft.features.loader import DecodeThenForward, image_loader

    make_photo_folder(tmp_path / "p", per_class=6)
    paths = sorted((tmp_path / "p").glob("*/*.jpg"))
    broken = tmp_path / "p" / "blue" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    paths.insert(5, broken)
    a = list(DecodeThenForward(paths, PRE.load, batch_size=4, threads=2))
    b = list(image_loader(paths, PRE.load, batch_size=4, workers=1))
    assert len(a) == len(b) == 4
    for (ia, xa, ea), (ib, xb, eb) in zip(a, b):
        assert ia == ib and [i for i, _ in ea] == [i for i, _ in eb]
        assert torch.equal(xa, xb)
    assert [i for _, _, e in a for i, _ in e] == [5]
