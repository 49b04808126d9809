"""A run's features of some photos: what evaluation, calibration and the report score with the
run's head.

Frozen-backbone runs read the feature cache training filled (no forward pass for photos
training saw) and fill it for new ones; runs that trained their backbone push the photos
through the stored network."""

from __future__ import annotations

import numpy as np

from graft.backbones.preprocess import CENTRE, CropAt
from graft.run.store import load_head, load_run, read_record, run_backbone_source


def run_features(run_dir, samples, *, cache_dir=None, weights=None, batch_size: int = 32,
                 workers: int | None = None, progress: bool = False, mirror: bool = False, at=None):
    """-> (features (N, D) float32, ok mask, head, skipped [{path, reason}]) for data.Samples.

    `mirror`, `at`: the features of another crop than the centre one (--tta: mirrored, or at a
    corner, graft.backbones.preprocess.CropAt; cached apart from the plain ones)."""
    at = CENTRE if at is None else tuple(at)
    desc = "features" + (" (mirrored)" if mirror else "") + (f" (crop at {at[0]:g},{at[1]:g})" if at != CENTRE else "")
    record = read_record(run_dir)
    if record.backbone.stored:
        return _through_the_network(run_dir, samples, weights=weights, batch_size=batch_size, workers=workers,
                                    mirror=mirror, at=at)
    from graft.cache import cache_root
    from graft.data.placeholders import RefuseNonPhotos
    from graft.features.concat import JoinedCache, source_features

    head = load_head(run_dir)  # checked against model.json before any photo is read
    source = run_backbone_source(record.backbone, record.preprocessing, weights)

    # placeholders refused as training refuses them: a placeholder's features in the cache
    # would be used, undecoded and so unchecked, by the next graft train on these photos.
    # Only the centre crop is judged (the one training caches): a corner of a real photo may
    # well be plain sky or a studio wall.
    def load_for(pre):
        crop = CropAt(pre, at, mirror)
        return RefuseNonPhotos(crop) if (at, mirror) == (CENTRE, False) else crop

    point = "pooled" + (":mirrored" if mirror else "") + (f":at{at[0]:g},{at[1]:g}" if at != CENTRE else "")
    cache = JoinedCache(source.parts, cache_root(cache_dir), point)  # each part's own namespace
    feats, ok, stats = source_features(source, samples, cache, load_for=load_for, batch_size=batch_size,
                                       workers=workers, progress=progress, desc=desc)
    return feats, ok, head, stats.skipped


def _through_the_network(run_dir, samples, *, weights, batch_size, workers, mirror, at):
    """run_features for a run that stored its trained backbone: the photos through its network."""
    model = load_run(run_dir, weights=weights)
    feats, ok, skipped = None, np.ones(len(samples), bool), []
    for idx, f, errors in model.batches([s.path for s in samples], batch_size=batch_size, workers=workers,
                                        mirror=mirror, at=at):
        for i, e in errors:
            ok[i] = False
            skipped.append({"path": e.path, "reason": e.reason})
        if f is not None:
            if feats is None:
                feats = np.zeros((len(samples), f.shape[1]), np.float32)
            feats[idx] = f.float().numpy()
    return (feats if feats is not None else np.zeros((len(samples), 0), np.float32)), ok, model.head, skipped
