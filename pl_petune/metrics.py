"""Task metrics as torchmetrics, named as the modules log them (``dev/<name>``, ``test/<name>``)."""

from __future__ import annotations

from typing import Any

import torch
import torchmetrics
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy, MulticlassF1Score, MulticlassMatthewsCorrCoef
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from pl_petune.tasks import TaskSpec


def build_metric(spec: TaskSpec, name: str) -> torchmetrics.Metric:
    n = len(spec.labels) if spec.kind == "classification" else max(spec.num_choices, 2)
    if name == "accuracy":
        return MulticlassAccuracy(num_classes=n, average="micro")
    if name == "f1_macro":  # SuperGLUE CB scorer: macro F1 over the classes
        return MulticlassF1Score(num_classes=n, average="macro")
    if name == "f1":  # GLUE MRPC/QQP scorer: F1 of the positive class (label 1)
        return _BinaryF1()
    if name == "mcc":
        return MulticlassMatthewsCorrCoef(num_classes=n)
    if name == "pearson":
        return PearsonCorrCoef()
    if name == "spearman":
        return SpearmanCorrCoef()
    raise ValueError(f"unknown metric {name!r}; known: accuracy, f1_macro, f1, mcc, pearson, spearman")


class _BinaryF1(BinaryF1Score):
    """Binary F1 on class-index predictions (argmax of 2 logits)."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(preds.long(), target.long())


def build_metrics(spec: TaskSpec, prefix: str) -> torchmetrics.MetricCollection:
    return torchmetrics.MetricCollection({m.name: build_metric(spec, m.name) for m in spec.metrics}, prefix=prefix)


def score_predictions(spec: TaskSpec, preds: Any, target: Any) -> dict[str, float]:
    """Metric values (no prefix) of predictions against targets, e.g. for a majority baseline."""
    metrics = build_metrics(spec, prefix="")
    dtype = torch.float if spec.kind == "regression" else torch.long
    metrics.update(torch.as_tensor(preds, dtype=dtype), torch.as_tensor(target, dtype=dtype))
    return {k: float(v) for k, v in metrics.compute().items()}
