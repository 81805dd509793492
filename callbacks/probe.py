"""The closed-form linear probe of LP-FT (Kumar et al., ICLR 2022): L-BFGS logistic regression on frozen features.

As Kumar et al.'s ``log_reg_sk.py``: the features entering the head's last ``nn.Linear`` are computed once
(module in eval mode), normalised by the train features' global mean and std, and scikit-learn's
``LogisticRegression`` (lbfgs) is fitted over a sweep of ``C``, warm-started along the sweep with
``max_iter`` iterations per value; the ``C`` with the best dev accuracy wins and its weights are mapped back
to raw features. A binary problem with two logits gets ``[-w/2, w/2]`` as in Kumar's code.

scikit-learn is the one optional dependency of the callbacks (``pip install 'pl-petune-callbacks[lbfgs]'``);
it is imported only when this probe runs.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Sequence, cast

import torch
from lightning.pytorch import LightningModule, Trainer
from pl_petune.callbacks._errors import CallbackMisuse
from pl_petune.callbacks._inference import infer
from torch import nn

# Kumar et al.'s sweep: num_reg_values = 50 over logspace(-7, 2), max_iter = 20 (REFERENCE §3.5, §10).
KUMAR_CS = tuple(float(c) for c in torch.logspace(-7, 2, 50, dtype=torch.float64).tolist())
KUMAR_MAX_ITER = 20


def require_sklearn(owner: str) -> None:
    """Refuse ``solver='lbfgs'`` up front when scikit-learn is not installed."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise CallbackMisuse(f"{owner}.solver='lbfgs' fits scikit-learn's LogisticRegression (Kumar et al.'s code) "
                             "but scikit-learn is not installed; pip install scikit-learn (or the [lbfgs] extra), "
                             "or use solver='adamw'") from None


def check_settings(owner: str, c_values: Optional[Sequence[float]], max_iter: int) -> tuple[float, ...]:
    """The probe's ``C`` values (default :data:`KUMAR_CS`) as floats, refused unless all positive, and its
    iteration count, refused unless an int >= 1."""
    values = tuple(float(c) for c in (c_values if c_values is not None else KUMAR_CS))
    if not values or any(c <= 0 for c in values):
        raise CallbackMisuse(f"{owner}.cs must be positive values, got {list(values)}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise CallbackMisuse(f"{owner}.lbfgs_max_iter must be an int >= 1, got {max_iter!r}")
    return values


def _gather(trainer: Trainer, t: torch.Tensor) -> torch.Tensor:
    """Rows of every rank, in rank order (ranks may hold different counts)."""
    if trainer.world_size == 1:
        return t
    n = torch.tensor([t.shape[0]], device=trainer.strategy.root_device)
    counts = trainer.strategy.all_gather(n).flatten().tolist()
    pad = torch.zeros((max(counts), *t.shape[1:]), dtype=t.dtype)
    pad[: t.shape[0]] = t
    allt = trainer.strategy.all_gather(pad.to(trainer.strategy.root_device)).cpu()
    return torch.cat([allt[r, : int(c)] for r, c in enumerate(counts)])


def _features(trainer: Trainer, pl_module: LightningModule, loader: Any, last: nn.Linear,
              forward: Optional[Callable[[LightningModule, Any], Any]],
              label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    got = infer(pl_module, loader, forward=forward, capture=last, label_key=label_key,
                to_device=trainer.strategy.batch_to_device, keep_outputs=False)
    if got.labels is None:
        raise CallbackMisuse(f"HeadWarmStart(solver='lbfgs'): the batches have no labels; batches must be dicts with "
                             f"{label_key!r} (set label_key) or (inputs, labels) tuples")
    x, y = got.features, got.labels
    if x is None or x.dim() != 2 or x.shape[0] != y.shape[0]:
        rows = 0 if x is None else x.shape[0]
        raise CallbackMisuse(f"HeadWarmStart(solver='lbfgs'): {rows} feature rows for {y.shape[0]} labels "
                             "(multiple choice?); use solver='adamw'")
    if y.is_floating_point():
        raise CallbackMisuse("HeadWarmStart(solver='lbfgs') needs class labels, got floats (regression); "
                             "use solver='adamw'")
    return _gather(trainer, x), _gather(trainer, y)


def sweep(xtr: torch.Tensor, ytr: torch.Tensor, xdev: torch.Tensor, ydev: torch.Tensor, c_values: Sequence[float],
          max_iter: int, fit_intercept: bool) -> dict[str, Any]:
    """Kumar et al.'s sweep on raw features; returns the best ``C``'s weights mapped back to raw features."""
    from sklearn.linear_model import LogisticRegression

    xtr_np, ytr_np = xtr.double().numpy(), ytr.numpy()
    mean, std = float(xtr_np.mean()), float(xtr_np.std()) or 1.0
    ztr, zdev = (xtr_np - mean) / std, (xdev.double().numpy() - mean) / std
    clf = LogisticRegression(warm_start=True, max_iter=max_iter, fit_intercept=fit_intercept)
    best = None
    for c in c_values:
        clf.C = c
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings at max_iter, as in Kumar's sweep
            clf.fit(ztr, ytr_np)
        acc = float((clf.predict(zdev) == ydev.numpy()).mean())
        if best is None or acc > best[0]:
            best = (acc, c, clf.coef_.copy(), clf.intercept_.copy() if fit_intercept else None,
                    clf.classes_.copy(), float(clf.score(ztr, ytr_np)))
    acc, c, coef, icpt, classes, train_acc = best  # type: ignore[misc]
    return {"coef": coef / std, "intercept": (icpt - coef.sum(1) * mean / std) if icpt is not None else None,
            "classes": classes.tolist(), "C": c, "dev_accuracy": acc, "train_accuracy": train_acc,
            "n_train": int(xtr.shape[0]), "n_dev": int(xdev.shape[0]), "features": int(xtr.shape[1]),
            "cs": list(c_values), "max_iter": max_iter, "normalisation": {"mean": mean, "std": std}}


def map_probe(result: dict[str, Any], last: nn.Linear) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The probe's weights as the head Linear's ``(weight, bias)``; refused when the classes do not fit it."""
    import numpy as np

    coef = torch.from_numpy(np.asarray(result["coef"]))
    icpt = result["intercept"]
    icpt = torch.from_numpy(np.asarray(icpt)) if icpt is not None else None
    classes = [int(c) for c in result["classes"]]
    out = last.out_features
    if len(classes) == 2 and coef.shape[0] == 1:
        if out == 1:
            return coef, icpt
        if out == 2 and classes == [0, 1]:
            # Kumar et al.: a binary probe becomes two softmax logits [-w/2, w/2]
            return torch.cat([-coef / 2, coef / 2]), (torch.cat([-icpt / 2, icpt / 2]) if icpt is not None else None)
    if classes == list(range(out)) and coef.shape[0] == out:
        return coef, icpt
    raise CallbackMisuse(f"HeadWarmStart(solver='lbfgs'): train labels {classes} do not map onto the head's "
                         f"{out} outputs; every class must occur in train and the head must have one output per "
                         "class (or one for binary)")


def solve_head(trainer: Trainer, pl_module: LightningModule, head: nn.Module, *, c_values: Sequence[float],
               max_iter: int, label_key: str = "labels",
               forward: Optional[Callable[[LightningModule, Any], Any]] = None) -> dict[str, Any]:
    """Fit the head's last ``nn.Linear`` by the probe (rank 0 solves on every rank's rows, all ranks load it).

    Returns:
        The probe's record: chosen ``C``, dev and train accuracy, row counts, the sweep and the normalisation.
    """
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise CallbackMisuse("HeadWarmStart(solver='lbfgs') fits the head's last nn.Linear, but the head has none; "
                             "use solver='adamw'")
    last = linears[-1]
    _ = trainer.estimated_stepping_batches  # sets up the train dataloader
    trainer.fit_loop.epoch_loop.val_loop.setup_data()
    if trainer.val_dataloaders is None:
        raise CallbackMisuse("HeadWarmStart(solver='lbfgs') chooses C on the development split, but fit has no "
                             "val dataloader; give one (or use DevSplitEarlyStopping(dev_fraction=...))")
    xtr, ytr = _features(trainer, pl_module, trainer.train_dataloader, last, forward, label_key)
    xdev, ydev = _features(trainer, pl_module, trainer.val_dataloaders, last, forward, label_key)
    result = sweep(xtr, ytr, xdev, ydev, c_values, max_iter, last.bias is not None) if trainer.is_global_zero else None
    result = cast("dict[str, Any]", trainer.strategy.broadcast(result, src=0))  # rank zero's dict, on every rank
    weight, bias = map_probe(result, last)
    with torch.no_grad():
        last.weight.copy_(weight.to(last.weight.dtype))
        if last.bias is not None and bias is not None:
            last.bias.copy_(bias.to(last.bias.dtype))
    return {k: v for k, v in result.items() if k not in ("coef", "intercept")}


__all__ = ["KUMAR_CS", "KUMAR_MAX_ITER", "require_sklearn", "check_settings", "sweep", "map_probe", "solve_head"]
