"""The run's augmentation: the user's request (preset + overrides) turned into one Pipeline for
one data set, and the preview of it.

The one data-dependent part is AlexNet's PCA colour shift, whose eigenvalues/eigenvectors come
from the training photos' RGB covariance: fitted once from small (DCT-downscaled) decodes, stored
in the cache (`<cache>/pca/`) keyed by the training files' content hashes, and recorded in the
run. They are rounded to 3 decimals so that adding a few photos rarely changes them, which would
otherwise change the augmentation key and invalidate every cached augmented view.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

from graft._util.atomic import write_json
from graft.cache.layout import PCA, cache_root, mark, touch
from graft.errors import GraftError, ImageError

log = logging.getLogger("graft")


def resolve_augmentation(preset: str, overrides, *, size: int, train_samples, cache_dir: Path):
    """-> Pipeline. `overrides`: "k=v,..." text, a mapping, or a path to a .json/.toml file."""
    from graft.augment import build, load_overrides

    try:
        if isinstance(overrides, (str, Path)) and Path(str(overrides)).suffix in (".json", ".toml"):
            overrides = load_overrides(overrides)
        pipeline = build(preset, overrides, size=size)
        if any(op.name == "pca_color" for op in pipeline):  # ImageNet's axes -> this data set's
            eigvals, eigvecs = fitted_pca(train_samples, cache_dir)
            pipeline = type(pipeline)(dataclasses.replace(op, eigvals=eigvals, eigvecs=eigvecs)
                                      if op.name == "pca_color" else op for op in pipeline)
    except ValueError as e:
        raise GraftError(str(e)) from None
    return pipeline


def describe(preset: str, pipeline, views: int | None = None) -> dict:
    """How the run records its augmentation (model.json and metrics.json): the preset, the
    pipeline's settings and key, and for the head strategy the cached views per photo."""
    return {"preset": preset, "views": views, "key": pipeline.config().key(), "pipeline": pipeline.describe()}


def fitted_pca(samples, cache_dir: Path) -> tuple[list[float], list[list[float]]]:
    """PCA of the training photos' RGB colours, cached by the set of their content hashes."""
    from graft.augment import fit_pca
    from graft.backbones.preprocess import pil_to_tensor
    from graft.data.images import read_image

    key = hashlib.sha256("\n".join(sorted(s.digest for s in samples)).encode()).hexdigest()[:16]
    path = Path(cache_dir) / PCA / f"{key}.json"
    try:
        d = json.loads(path.read_text())
        touch(path)  # its last use, for `graft cache prune`
        return d["eigvals"], d["eigvecs"]
    except (OSError, ValueError, KeyError):
        pass
    images = []
    for s in samples:
        try:
            images.append(pil_to_tensor(read_image(s.path, min_size=(64, 64)).resize((64, 64))))
        except ImageError:
            continue  # reported by the run's own pass over the files
    eigvals, eigvecs = fit_pca(images, pixels_per_image=1024)
    eigvals = [round(v, 3) for v in eigvals]
    eigvecs = [[round(v, 3) for v in row] for row in eigvecs]
    mark(path.parent, PCA)  # graft made this folder: `graft cache prune` may clear it
    try:
        write_json(path, {"eigvals": eigvals, "eigvecs": eigvecs, "n_images": len(images)})
    except GraftError as e:  # a read-only or full cache: fitted again next time, the run goes on
        log.info("could not keep the colour PCA: %s", e)
    return eigvals, eigvecs


def augment_preview(photos, out, *, preset: str | None = None, aug=None, n_photos: int = 3,
                    n_draws: int = 6, size: int = 224, seed: int = 0, cache_dir=None) -> Path:
    """One picture: a few photos raw and under `n_draws` draws of the pipeline, one row per op.
    `preset` None: graft.augment's DEFAULT_PRESET, as for fine-tuning."""
    from graft.augment import DEFAULT_PRESET, preview_grid
    from graft.augment.preview import is_preview
    from graft.data import scan_photos
    from graft.data.folder import spread_over_classes
    from graft.data.images import read_image
    from graft.run.guard import check_output

    check_output(out, "--out", inputs=[photos], is_ours=is_preview)  # before any work
    data = scan_photos(photos)
    check_output(out, "--out", inputs=[s.path for s in data.train + data.val], is_ours=is_preview)
    pipeline = resolve_augmentation(preset or DEFAULT_PRESET, aug, size=size, train_samples=data.train,
                                    cache_dir=cache_root(cache_dir))
    images = [read_image(s.path, min_short_side=2 * size) for s in spread_over_classes(data.train, n_photos)]
    return preview_grid(images, pipeline, out, n_draws=n_draws, seed=seed)
