"""Scoring a module on extra data with the weights it holds: the out-of-distribution sets of a run."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch


def predict(model: Any, batches: Iterable[dict[str, torch.Tensor]],
            outputs: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels of ``model`` (a :class:`~pl_petune.methods.PetuneModule`) over ``batches``.

    The loop is the one shared with head-feature capture and the L-BFGS probe
    (:func:`pl_petune.callbacks._inference.infer`: eval mode, no gradients, the model's device, its mode
    restored afterwards). ``outputs``, when given, receives the model's raw outputs (logits or values).
    """
    from pl_petune.callbacks._inference import infer

    out = infer(model, batches, forward=lambda m, b: m(b["input_ids"], b["attention_mask"], b.get("token_type_ids")))
    if out.outputs is None or out.labels is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if outputs is not None:
        outputs.append(out.outputs)
    return model.predictions(out.outputs).cpu().numpy(), out.labels.numpy()


def evaluate_ood(model: Any, dm: Any, outputs: dict | None = None) -> tuple[dict[str, float], dict[str, int]]:
    """Score ``model`` as it is (after the test pass: the best checkpoint) on every OOD set of ``dm``.

    ``outputs``, when given, receives ``{name: (raw outputs, mapped labels)}`` of every set (for
    ``--run.save_predictions``).

    Returns:
        ``{"ood/<name>/<metric>": value}`` with the training task's metrics over the mapped labels, and
        ``{name: number of examples}``.
    """
    from pl_petune.metrics import score_predictions

    metrics: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for name in dm.ood:
        raw: list = []
        preds, labels = predict(model, dm.ood_dataloader(name), raw)
        if outputs is not None and raw:
            outputs[name] = (raw[0], labels)
        scores = score_predictions(model.spec, preds, labels)
        metrics.update({f"ood/{name}/{k}": v for k, v in scores.items()})
        sizes[name] = int(len(labels))
    return metrics, sizes
