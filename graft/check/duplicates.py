"""Copies across the folder: the same photo twice in a split (exact or re-encoded/resized), and the
same photo in train and val (leakage, which inflates every validation figure).

Exact copies share a content hash; near copies are found by two 256-bit perceptual hashes (pHash
on the DCT of a 64x64 grayscale thumbnail, dHash on horizontal gradients). Every pair is compared,
exactly, as a matrix product: with bits as +-1, the Hamming distance of two hashes is
(256 - a.b) / 2, so BLAS does the all-pairs work (10k photos: 0.45 s of CPU, where numpy's
broadcast XOR + popcount took 3.2 s). Still N^2, but its constant is far below the per-photo
decode that precedes it up to ~100k photos; an approximate index (LSH) would miss pairs at the
40-bit threshold unless it had dozens of tables.
"""

from __future__ import annotations

import numpy as np

from graft.data.placeholders import NEAR_CONSTANT_STD
from graft.check.findings import Findings

PHASH_MAX_DISTANCE = 40  # bits of 256: re-encoded/resized copies of photos measure <= ~26, different
DHASH_MAX_DISTANCE = 64  # photos >= ~60 (pHash) / ~57 (dHash); dHash is noisier on flat noise


def exact_leaks(train, val) -> list[tuple]:
    """(val item, train item) pairs with the same content hash (`.digest`); the first train copy."""
    in_train: dict = {}
    for t in train:
        in_train.setdefault(t.digest, t)
    return [(v, in_train[v.digest]) for v in val if v.digest in in_train]


def leak_reason(other, near: bool = False) -> str:
    """Why a validation photo that copies the training photo `other` (a name or path) is an error."""
    how = f"near-identical to the training photo {other} (perceptual hash)" if near else \
        f"identical to the training photo {other}"
    return f"{how}: the same photo is in train and val, so validation accuracy is inflated"


def find_duplicates(files, findings: Findings, skip: set[str]) -> None:
    """Report duplicates, near-duplicates and leakage among the decoded `files` (PhotoFile)."""
    usable = [f for f in files if f.usable]
    # exact copies: the first (by split, path) keeps, later ones are reported
    first: dict[tuple[str, str], object] = {}
    exact = set()
    for f in usable:
        key = (f.split, f.digest)
        if key in first:
            other = first[key]
            findings.add("duplicate", f.path, f"identical to {other.rel} (same bytes, both in {f.split})"
                         + _labels(f, other))
            exact.add(f.rel)
        else:
            first[key] = f
    leaked = exact_leaks([f for f in usable if f.split == "train"], [f for f in usable if f.split == "val"])
    for f, other in leaked:
        findings.add("leakage", f.path, leak_reason(other.rel) + _labels(f, other))
    # near copies, by perceptual hash; near-constant images hash to noise, so they are left out
    reps = [f for f in usable if f.rel not in exact and f.rel not in skip and f.dhash is not None
            and f.stats.get("std", 0) >= NEAR_CONSTANT_STD]
    if len(reps) < 2:
        return
    near: dict[int, list[int]] = {}
    for i, j in _near_pairs(np.stack([f.dhash for f in reps]), np.stack([f.phash for f in reps])):
        near.setdefault(i, []).append(j)
        near.setdefault(j, []).append(i)
    leaked_rels = {f.rel for f, _ in leaked}
    for j, f in enumerate(reps):
        others = [i for i in sorted(near.get(j, [])) if reps[i].digest != f.digest]
        in_train = [reps[i] for i in others if reps[i].split == "train"]
        if f.split == "val" and in_train and f.rel not in leaked_rels:
            findings.add("leakage", f.path, leak_reason(in_train[0].rel, near=True) + _labels(f, in_train[0]))
        earlier = [reps[i] for i in others if i < j and reps[i].split == f.split]
        if earlier:
            o = earlier[0]
            findings.add("near_duplicate", f.path, f"near-identical to {o.rel} (perceptual hash, both in "
                         f"{f.split}): a re-encoded or resized copy?" + _labels(f, o))


def _labels(f, other) -> str:
    if f.cls != other.cls:
        return f"; labelled {f.cls!r} here but {other.cls!r} there"
    return ""


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8), axis=-1).reshape(*x.shape, -1).sum(-1)


def _near_pairs(dh: np.ndarray, ph: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs (i < j) close on both hashes: pHash by matrix product in blocks, then dHash on
    the candidates."""
    signs = np.unpackbits(np.ascontiguousarray(ph, dtype=np.uint8), axis=1).astype(np.float32) * 2 - 1
    bits = signs.shape[1]
    d64 = np.ascontiguousarray(dh).view(np.uint64)
    n = len(signs)
    block = max(64, min(4096, 16_000_000 // max(1, n)))  # bounds memory: block x n float32
    out: list[tuple[int, int]] = []
    for s in range(0, n, block):
        dots = signs[s : s + block] @ signs[s:].T  # pairs (i, j >= i) only
        ii, jj = np.nonzero(dots >= bits - 2 * PHASH_MAX_DISTANCE)  # distance = (bits - dot) / 2
        ii, jj = ii + s, jj + s
        keep = ii < jj
        ii, jj = ii[keep], jj[keep]
        if len(ii):
            close = _popcount(d64[ii] ^ d64[jj]).sum(-1) <= DHASH_MAX_DISTANCE
            out += zip(ii[close].tolist(), jj[close].tolist())
    return out
