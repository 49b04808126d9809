"""The features the deep checks share: the frozen backbone's pooled features of every usable photo
(through the same feature cache `graft train` uses, so a check warms the cache for training),
with the stratified folds that keep each photo out of what judges it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graft.check.findings import Findings

MIN_PER_CLASS = 4  # a class with fewer usable photos has no mean or fold worth judging others by
FOLDS = 5


@dataclass
class DeepFeatures:
    """One row per photo: `files` (PhotoFile), features `x`, label `y` in 0..len(names)-1, the
    class `names`, and `folds` (stratified, deterministic; identical files share a fold)."""

    files: list
    x: np.ndarray
    y: np.ndarray
    names: list[str]
    folds: np.ndarray


def deep_features(files, classes, findings: Findings, *, skip, backbone, cache_dir, progress,
                  workers) -> DeepFeatures | None:
    """The features of the decoded `files` (`skip` aside) of classes with MIN_PER_CLASS or more of
    them; None (and a note) when fewer than two classes have that many."""
    from graft.backbones import resolve_backbone
    from graft.cache import FeatureCache, cache_root
    from graft.features.extract import cache_namespace, extract_features

    cand = [f for f in files if f.usable and f.rel not in skip]
    per_class = np.bincount([f.label for f in cand], minlength=len(classes))
    few = [c for c, n in zip(classes, per_class) if 0 < n < MIN_PER_CLASS]
    kept = [k for k, n in enumerate(per_class) if n >= MIN_PER_CLASS]
    if few:
        findings.add("check_skipped", findings.root,
                     f"mislabelled-photo check left out class(es) {', '.join(map(repr, few))}: it needs at least "
                     f"{MIN_PER_CLASS} usable photos per class")
    if len(kept) < 2:
        if not few:
            findings.add("check_skipped", findings.root, "mislabelled-photo check skipped: it needs at least two "
                         f"classes with {MIN_PER_CLASS} or more usable photos")
        return None
    cand = [f for f in cand if f.label in kept]
    source = resolve_backbone(backbone)
    cache = FeatureCache(cache_root(cache_dir), cache_namespace(source))
    digests = sorted({f.digest for f in cand})
    path_of = {}
    for f in cand:
        path_of.setdefault(f.digest, f.path)
    feats, ok, _ = extract_features(source.build, digests, [path_of[d] for d in digests], cache,
                                    load=source.preprocessing.load, workers=workers, progress=progress,
                                    desc="check: features")
    row = {d: i for i, d in enumerate(digests) if ok[i]}
    cand = [f for f in cand if f.digest in row]
    remap = {k: j for j, k in enumerate(kept)}
    return DeepFeatures(cand, feats[[row[f.digest] for f in cand]], np.array([remap[f.label] for f in cand]),
                        [classes[k] for k in kept], _folds(cand, FOLDS))


def _folds(cand, k: int) -> np.ndarray:
    """Stratified, deterministic folds; identical files share a fold (their features are identical)."""
    fold_of: dict[str, int] = {}
    counters: dict[int, int] = {}
    for f in sorted(cand, key=lambda f: (f.label, f.digest)):
        if f.digest not in fold_of:
            fold_of[f.digest] = counters.get(f.label, 0) % k
            counters[f.label] = counters.get(f.label, 0) + 1
    return np.array([fold_of[f.digest] for f in cand])
