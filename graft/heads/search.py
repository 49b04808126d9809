"""Choosing on training photos only: stratified k-fold cross-validation on cached features.

Everything graft chooses for a frozen-backbone head (solver, L2 strength, number of AdamW epochs,
class weighting) is chosen here, from the training photos' features and labels alone: no function
in this module is given the validation photos. The winner is then refitted on ALL training photos,
and the caller predicts the validation photos once, at the end (`fit_and_hold_out`), so the figure
reported as `val_accuracy` was never used to choose anything. `cv_accuracy` (mean and spread over
folds) is the training photos' own estimate; being the maximum over the candidates tried, it is a
little optimistic, which is why both are reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from graft._util.atomic import write_safetensors
from graft._version import __version__
from graft.cache.layout import touch
from graft.errors import GraftError
from graft.heads.early_stopping import EarlyStopping
from graft.heads.folds import NotEnoughPhotos, best_row, fold_scores, stratified_folds, train_rows  # noqa: F401 (re-exported)

log = logging.getLogger("graft")

IMBALANCE_RATIO = 3.0  # balance="auto" weights classes when the largest has more than 3x the smallest
SOLVERS = ("lbfgs", "adamw")
MEMO_FORMAT = 1  # of a remembered choice (see remembered_choice)


# --- class balance ----------------------------------------------------------------------------------

def class_weights(y, n_classes: int, balance: str = "auto") -> tuple[np.ndarray | None, str]:
    """-> (per-class loss weights or None, why). "auto": weight only when the largest class has
    more than IMBALANCE_RATIO times the photos of the smallest; "balanced": always; "none": never.
    Weights are n / (C * count), so every class carries the same total weight."""
    if balance not in ("auto", "none", "balanced"):
        raise ValueError(f"balance must be auto, none or balanced, not {balance!r}")
    counts = np.bincount(np.asarray(y, dtype=int), minlength=n_classes).astype(float)
    ratio = counts.max() / max(counts.min(), 1.0)
    if balance == "none":
        return None, "balance=none"
    if balance == "auto" and ratio <= IMBALANCE_RATIO:
        return None, f"classes within {IMBALANCE_RATIO:g}x of each other ({ratio:.1f}x): unweighted"
    weights = counts.sum() / (n_classes * np.maximum(counts, 1.0))
    why = "balance=balanced" if balance == "balanced" else (
        f"largest class has {ratio:.1f}x the photos of the smallest (> {IMBALANCE_RATIO:g}x): each class weighted equally")
    return weights, why


# --- cross-validation -------------------------------------------------------------------------------

Fitter = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], torch.Tensor]]


def cross_validate(x, y, candidates: dict[str, Fitter], *, folds: list[np.ndarray], n_classes: int) -> list[dict]:
    """Score each candidate on every fold: fit on the other folds, predict the held-out one.

    A candidate is `fit(x_train, y_train) -> logits_fn`. `x` may be (N, D) or (N, K, D) with
    augmented views (view 0 the clean one): candidates train on all views of their rows, and
    held-out rows are scored on their clean features. Returns one row per candidate:
    {name, accuracy: {mean, std, folds}, balanced_accuracy: {...}, log_loss, oof_logits}.
    """
    x = np.asarray(x)
    y = np.asarray(y, dtype=int)
    rows = []
    for name, fit in candidates.items():
        oof = np.zeros((len(y), n_classes), np.float32)
        for held in folds:
            tr = train_rows(len(y), held)
            logits_fn = fit(x[tr], y[tr])
            with torch.no_grad():
                oof[held] = np.asarray(logits_fn(_clean(x[held])), dtype=np.float32)
        rows.append({"name": name, **fold_scores(oof, y, folds), "oof_logits": oof})
    return rows


def _clean(x: np.ndarray) -> np.ndarray:
    return x[:, 0] if x.ndim == 3 else x


# --- the AdamW head's epochs ------------------------------------------------------------------------

@dataclass
class EpochChoice:
    epochs: int  # chosen on the folds' held-out loss
    row: dict  # the cross-validation row at that epoch (accuracy, balanced_accuracy, log_loss)
    curve: list[float] = field(default_factory=list)  # mean held-out loss per epoch
    oof_logits: np.ndarray | None = None


def select_epochs(x, y, n_classes: int, cfg=None, *, folds: list[np.ndarray], class_weight=None) -> EpochChoice:
    """Early stopping chosen on folds: train one AdamW head per fold in lockstep, epoch by epoch,
    and stop when the mean held-out loss over the folds has not improved for `cfg.patience`
    epochs; the number of epochs is where that mean was lowest. Its cross-validated accuracy
    is the folds' accuracy at that epoch."""
    from graft.heads.probe import small_problem_threads

    x = np.asarray(x)
    with small_problem_threads(int(np.prod(x.shape[:-1])), x.shape[-1]):
        return _select_epochs(x, y, n_classes, cfg, folds, class_weight)


def _select_epochs(x, y, n_classes, cfg, folds, class_weight) -> EpochChoice:
    from graft.heads.softmax import HeadConfig, HeadTrainer

    cfg = cfg or HeadConfig()
    y = np.asarray(y, dtype=int)
    trainers = []
    for held in folds:
        tr = train_rows(len(y), held)
        trainers.append(HeadTrainer(x[tr], y[tr], _clean(x[held]), y[held], n_classes, cfg,
                                    class_weight=class_weight))
    curve: list[float] = []
    stopping = EarlyStopping(cfg.patience)
    best_oof = None  # out-of-fold logits at the best epoch so far
    for epoch in range(cfg.epochs):
        oof = np.zeros((len(y), n_classes), np.float32)
        for held, t in zip(folds, trainers):
            t.run_epoch()
            t.layer.eval()
            with torch.no_grad():
                oof[held] = t.layer(t.x_val).numpy()
        loss = float(nn.functional.cross_entropy(torch.from_numpy(oof).double(), torch.from_numpy(y)).item())
        curve.append(round(loss, 6))
        # the first epoch is the best so far whatever its loss; a later one must beat the curve's figure
        if epoch == 0 or stopping.improves(loss):
            stopping.keep(epoch, curve[-1])
            best_oof = oof
        elif stopping.should_stop(epoch):
            break
    return EpochChoice(stopping.best_epoch + 1, fold_scores(best_oof, y, folds), curve, best_oof)


def refit_head(x, y, n_classes: int, cfg, epochs: int, *, class_weight=None) -> nn.Linear:
    """The AdamW head trained on all photos given for exactly `epochs` epochs (no validation)."""
    from graft.heads.softmax import HeadTrainer, fold_standardisation
    from graft.heads.probe import small_problem_threads

    x = np.asarray(x)
    with small_problem_threads(int(np.prod(x.shape[:-1])), x.shape[-1]):
        t = HeadTrainer(x, y, np.zeros((0, np.asarray(x).shape[-1]), np.float32), np.zeros(0, int), n_classes, cfg,
                        class_weight=class_weight)
        for _ in range(epochs):
            t.run_epoch()
    return fold_standardisation(t.layer, t.mean, t.std)


def refit_choice(selection: dict, x, y, n_classes: int, cfg, *, memo=None) -> nn.Linear:
    """The head chosen on some photos (`selection`: HeadChoice.to_json's solver, strength or
    epochs, class weights) fitted again, unchanged, on others (x, y): graft.recipe's model on the
    training + validation photos. `memo`: a folder where it is kept under the digest of its inputs
    (a warm rerun fits nothing)."""
    from graft.heads.probe import fit_probe

    x, y = np.asarray(x), np.asarray(y, dtype=int)
    weights = selection.get("class_weight")
    weights = None if weights is None else np.asarray(weights, np.float32)
    how = {k: selection.get(k) for k in ("solver", "strength", "epochs", "class_weight")}
    # named like a choice (the cache's prune knows graft's files by that name); the settings differ
    path = None if memo is None else Path(memo) / f"{choice_key(x, y, n_classes, {'refit': how, 'head': cfg.to_json()})}.safetensors"
    if path is not None and path.is_file():
        try:
            from safetensors.torch import load_file

            head = _linear(load_file(str(path)))
            touch(path)
            return head
        except Exception as e:  # damaged: fitted again and rewritten
            log.info("the remembered refit %s is unusable (%s): fitted again", path, e)
    if how["solver"] == "lbfgs":
        head = fit_probe(x, y, n_classes, float(how["strength"]), class_weight=weights).head
    else:
        head = refit_head(x, y, n_classes, cfg, int(how["epochs"]), class_weight=weights)
    if path is not None:
        _keep(path, {"weight": head.weight.detach().contiguous(), "bias": head.bias.detach().contiguous()})
    return head


def _linear(tensors: dict) -> nn.Linear:
    head = nn.Linear(tensors["weight"].shape[1], tensors["weight"].shape[0])
    with torch.no_grad():
        head.weight.copy_(tensors["weight"])
        head.bias.copy_(tensors["bias"])
    return head


def _keep(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """Best effort: a cache that cannot be written only costs the fitting next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(path, tensors, metadata=metadata)
    except (OSError, GraftError, TypeError, ValueError) as e:
        log.info("could not keep %s: %s", path, e)


# --- the whole choice -------------------------------------------------------------------------------

@dataclass
class HeadChoice:
    head: nn.Linear  # refitted on all the training photos with the chosen settings
    solver: str  # "lbfgs" | "adamw"
    strength: float | None  # L2 strength (lbfgs)
    epochs: int | None  # number of epochs (adamw)
    cv: dict  # the winner's row: accuracy / balanced_accuracy {mean, std, folds}, log_loss
    candidates: list[dict]  # every candidate's row (solver, strength or epochs, scores)
    folds: int
    score: str  # what chose: "accuracy" or "balanced_accuracy"
    class_weight: list[float] | None
    balance: str  # why the classes are (not) weighted
    oof_logits: np.ndarray | None = None  # the winner's out-of-fold logits on the training photos

    def to_json(self) -> dict:
        """What metrics.json records about the choice."""
        return {
            "solver": self.solver, "strength": self.strength, "epochs": self.epochs,
            "cv_accuracy": {k: self.cv["accuracy"][k] for k in ("mean", "std")},
            "cv_balanced_accuracy": {k: self.cv["balanced_accuracy"][k] for k in ("mean", "std")},
            "folds": self.folds, "chosen_by": self.score, "class_weight": self.class_weight,
            "balance": self.balance,
            "candidates": [{k: r[k] for k in ("solver", "strength", "epochs", "curve") if k in r}
                           | {"cv_accuracy": r["accuracy"]["mean"], "cv_accuracy_std": r["accuracy"]["std"],
                              "cv_balanced_accuracy": r["balanced_accuracy"]["mean"], "log_loss": r["log_loss"]}
                           for r in self.candidates],
        }


def choose_head(x, y, n_classes: int, *, solvers=SOLVERS, strengths=None, head_cfg=None,
                balance: str = "auto", k: int = 5, keys=None, seed: int = 0, memo=None) -> HeadChoice:
    """Cross-validate the L-BFGS probe over its L2 grid and the AdamW head over its epochs on
    the training photos (x, y), pick the best, and refit it on all of them.

    `keys`: content digests of the rows (stable folds). `x` may hold augmented views (N, K, D).
    With weighted classes the choice is by balanced accuracy, else by accuracy; ties go to the
    lower cross-validated log loss, then to L-BFGS (no epochs to choose). `memo`: a folder
    where the choice is kept under the digest of all of these (remembered_choice), so a rerun
    on the same features gets the same head back without cross-validating again.
    """
    from graft.heads.softmax import HeadConfig

    unknown = set(solvers) - set(SOLVERS)
    if unknown or not solvers:
        raise ValueError(f"solvers must be among {', '.join(SOLVERS)}")
    head_cfg = head_cfg or HeadConfig()
    x = np.asarray(x)
    y = np.asarray(y, dtype=int)
    settings = {"solvers": list(solvers), "strengths": None if strengths is None else [float(v) for v in strengths],
                "head": head_cfg.to_json(), "balance": balance, "k": k, "keys": keys, "seed": seed}
    path = None if memo is None else Path(memo) / f"{choice_key(x, y, n_classes, settings)}.safetensors"
    choice = remembered_choice(path) if path is not None else None
    if choice is None:
        choice = _cross_validated(x, y, n_classes, solvers, strengths, head_cfg, balance, k, keys, seed)
        if path is not None:
            remember_choice(path, choice)
    return choice


def _cross_validated(x, y, n_classes, solvers, strengths, head_cfg, balance, k, keys, seed) -> HeadChoice:
    from graft.heads.probe import STRENGTHS, train_probe

    weights, why = class_weights(y, n_classes, balance)
    score = "balanced_accuracy" if weights is not None else "accuracy"
    try:
        folds = stratified_folds(y, k, keys=keys, seed=seed)
    except NotEnoughPhotos:  # a class with one photo: nothing to cross-validate with
        return _without_cv(x, y, n_classes, weights, why, score)
    rows: list[dict] = []
    pool: list[tuple[dict, np.ndarray, Callable[[], nn.Linear]]] = []  # (row, oof logits, refit)
    if "lbfgs" in solvers:
        probe = train_probe(x, y, n_classes, strengths=strengths or STRENGTHS, k=k, keys=keys, seed=seed,
                            class_weight=weights, score=score)
        rows += probe.table
        pool.append((probe.cv, probe.oof_logits, lambda: probe.head))  # already refitted on all of x
    if "adamw" in solvers:
        ep = select_epochs(x, y, n_classes, head_cfg, folds=folds, class_weight=weights)
        row = {"name": f"adamw epochs={ep.epochs}", "solver": "adamw", "epochs": ep.epochs, **ep.row,
               "curve": ep.curve}
        rows.append(row)
        pool.append((row, ep.oof_logits,
                     lambda: refit_head(x, y, n_classes, head_cfg, ep.epochs, class_weight=weights)))
    win = best_row([r for r, _, _ in pool], score)
    _, oof, refit = next(p for p in pool if p[0] is win)
    head = refit()
    return HeadChoice(head, win["solver"], win.get("strength"), win.get("epochs"),
                      {k: win[k] for k in ("accuracy", "balanced_accuracy", "log_loss")}, rows, len(folds),
                      score, None if weights is None else [round(float(w), 6) for w in weights], why, oof)


# --- the choice remembered --------------------------------------------------------------------------

def choice_key(x: np.ndarray, y: np.ndarray, n_classes: int, settings: dict) -> str:
    """The digest of everything a choice depends on: the features' values, the labels, the
    settings (the rows' keys and the seed make the folds) and graft's version."""
    head = json.dumps({"format": MEMO_FORMAT, "graft": __version__, "n_classes": n_classes, "x": [x.dtype.str, x.shape],
                       **settings}, sort_keys=True, default=str)
    h = hashlib.sha256(head.encode())
    h.update(np.ascontiguousarray(x).data)
    h.update(np.ascontiguousarray(y, dtype=np.int64).data)
    return h.hexdigest()[:32]


_KEPT = ("solver", "strength", "epochs", "cv", "candidates", "folds", "score", "class_weight", "balance")


def remembered_choice(path: Path) -> HeadChoice | None:
    """The choice kept at `path` (remember_choice), bit for bit; None if there is none (or it
    cannot be read: then it is made again)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            kept = json.loads(f.metadata()["choice"])
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        head = _linear(tensors)
        oof = tensors.get("oof_logits")
        choice = HeadChoice(head, **{name: kept[name] for name in _KEPT},
                            oof_logits=None if oof is None else oof.numpy())
    except FileNotFoundError:
        return None
    except Exception as e:  # damaged, or of another layout: chosen again and rewritten
        log.info("the remembered head choice %s is unusable (%s): chosen again", path, e)
        return None
    touch(path)  # a use, for `graft cache prune`
    return choice


def remember_choice(path: Path, choice: HeadChoice) -> None:
    """Keep `choice` at `path`: the head's weights, its out-of-fold logits and the record. Best
    effort: a cache that cannot be written only costs the cross-validation next time."""
    tensors = {"weight": choice.head.weight.detach().contiguous(), "bias": choice.head.bias.detach().contiguous()}
    if choice.oof_logits is not None:
        tensors["oof_logits"] = torch.from_numpy(np.ascontiguousarray(choice.oof_logits))
    try:
        kept = json.dumps({name: getattr(choice, name) for name in _KEPT})
    except (TypeError, ValueError) as e:
        log.info("could not keep the head choice in %s: %s", path, e)
        return
    _keep(path, tensors, {"choice": kept})


# The L2 strength used when there is nothing to cross-validate with: the middle of the strengths
# chosen on hymenoptera by lite0/lite1/lite2 (0.01-0.03; bench/quality_study.py).
FALLBACK_STRENGTH = 0.03


def _without_cv(x, y, n_classes, weights, why, score) -> HeadChoice:
    """Too few photos to cross-validate: the probe at FALLBACK_STRENGTH, and no cv figure."""
    from graft.heads.probe import fit_probe

    head = fit_probe(x, y, n_classes, FALLBACK_STRENGTH, class_weight=weights).head
    nothing = {"mean": None, "std": None, "folds": []}
    return HeadChoice(head, "lbfgs", FALLBACK_STRENGTH, None,
                      {"accuracy": nothing, "balanced_accuracy": nothing, "log_loss": None}, [], 0, score,
                      None if weights is None else [round(float(w), 6) for w in weights],
                      why + "; a class has a single training photo: no cross-validation, default L2 strength")


def fit_and_hold_out(feats, y, train_idx, val_idx, n_classes: int, classes: list[str], *, keys=None,
                     views=None, **kw):
    """-> (HeadChoice, validation metrics): every choice on the training rows, then the
    validation rows predicted once. What the train step calls for a frozen-backbone head.

    `feats` (N, D) and `y` cover training and validation photos; `keys` their content digests;
    `views` (len(train_idx), K, D): augmented views of the training rows, trained on beside
    the clean features. Other keywords go to `choose_head`."""
    from graft.heads.metrics import classification_metrics

    feats = np.asarray(feats)
    y = np.asarray(y, dtype=int)
    train_idx, val_idx = np.asarray(train_idx, dtype=int), np.asarray(val_idx, dtype=int)
    x_train = feats[train_idx]
    if views is not None:
        x_train = np.concatenate([x_train[:, None], np.asarray(views, dtype=np.float32)], axis=1)
    choice = choose_head(x_train, y[train_idx], n_classes,
                         keys=None if keys is None else [keys[i] for i in train_idx], **kw)
    with torch.no_grad():
        pred = choice.head(torch.from_numpy(np.ascontiguousarray(_clean(feats[val_idx]), dtype=np.float32)))
    return choice, classification_metrics(y[val_idx], pred.argmax(1).numpy(), classes)
