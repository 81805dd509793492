"""Scoring a module on extra data with the weights it holds: the out-of-distribution sets of a run."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch


def predict(model: Any, batches: Iterable[dict[str, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels of ``model`` (a :class:`~pl_petune.methods.PetuneModule`) over ``batches``.

    Runs in eval mode without gradients on the model's device, and restores the model's mode afterwards.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds, labels = [], []
    try:
        with torch.no_grad():
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
                preds.append(model.predictions(logits).cpu().numpy())
                labels.append(batch["labels"].cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(preds), np.concatenate(labels)


def evaluate_ood(model: Any, dm: Any) -> tuple[dict[str, float], dict[str, int]]:
    """Score ``model`` as it is (after the test pass: the best checkpoint) on every OOD set of ``dm``.

    Returns:
        ``{"ood/<name>/<metric>": value}`` with the training task's metrics over the mapped labels, and
        ``{name: number of examples}``.
    """
    from pl_petune.metrics import score_predictions

    metrics: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for name in dm.ood:
        preds, labels = predict(model, dm.ood_dataloader(name))
        scores = score_predictions(model.spec, preds, labels)
        metrics.update({f"ood/{name}/{k}": v for k, v in scores.items()})
        sizes[name] = int(len(labels))
    return metrics, sizes
