"""The user's augmentation request (preset + overrides) turned into a Pipeline for one data set.

The one data-dependent part is AlexNet's PCA colour shift, whose eigenvalues/eigenvectors come
from the training photos' RGB covariance: fitted once from small (DCT-downscaled) decodes, stored
in the feature cache keyed by the training files' content hashes, and recorded in the run. They
are rounded to 3 decimals so that adding a few photos rarely changes them, which would otherwise
change the augmentation key and invalidate every cached augmented view.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ._atomic import write_json
from .errors import GraftError, ImageError


def resolve_augmentation(preset: str, overrides, *, size: int, train_samples, cache_dir: Path):
    """-> Pipeline. `overrides`: "k=v,..." text, a mapping, or a path to a .json/.toml file."""
    from .augment import build, load_overrides

    try:
        if isinstance(overrides, (str, Path)) and Path(str(overrides)).suffix in (".json", ".toml"):
            overrides = load_overrides(overrides)
        pipeline = build(preset, overrides, size=size)
        if any(op.name == "pca_color" for op in pipeline.ops):
            pipeline = build(preset, overrides, size=size, pca=fitted_pca(train_samples, cache_dir))
    except ValueError as e:
        raise GraftError(str(e)) from None
    return pipeline


def fitted_pca(samples, cache_dir: Path) -> tuple[list[float], list[list[float]]]:
    """PCA of the training photos' RGB colours, cached by the set of their content hashes."""
    from .augment import fit_pca
    from .cache_admin import touch
    from .data.images import read_image
    from .preprocess import pil_to_tensor

    key = hashlib.sha256("\n".join(sorted(s.digest for s in samples)).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "pca" / f"{key}.json"
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
    write_json(path, {"eigvals": eigvals, "eigvecs": eigvecs, "n_images": len(images)})
    return eigvals, eigvecs
