"""The task head every method puts on the backbone's features."""

from __future__ import annotations

import typing
from typing import Literal

import torch
from torch import nn

from pl_petune.errors import ConfigError

HeadKind = Literal["mlp", "linear", "ehft", "pooler_linear"]
BinaryHead = Literal["two_logits", "one_logit"]
HEADS = typing.get_args(HeadKind)
BINARY_HEADS = typing.get_args(BinaryHead)


class ClassificationHead(nn.Module):
    """The task head on the features :meth:`PetuneModule.encode` returns.

    ``mlp`` (default): dropout → dense(h, h) → tanh → dropout → out, RoBERTa's head and the PETuning head.
    ``linear``: dropout → out. ``ehft``: Linear(h, 2048) → ReLU → Linear(2048, out), weights N(0, 0.005)
    (EH-FT's ``NEW_MLPHeadMixin``). ``pooler_linear``: dropout → out on the backbone's *pretrained pooler*
    output (tanh(W·h_[CLS] + b)) instead of the first token: Hugging Face's ``BertForSequenceClassification``
    and the PETuning code's multiple-choice head (hidden + 1 trainable parameters per choice score).
    """

    def __init__(self, hidden: int, num_outputs: int, kind: str = "mlp", dropout: float = 0.1) -> None:
        super().__init__()
        if kind not in HEADS:
            raise ConfigError(f"unknown head {kind!r}; known: {', '.join(HEADS)}")
        self.kind = kind
        if kind == "mlp":
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.Tanh(), nn.Dropout(dropout),
                                     nn.Linear(hidden, num_outputs))
        elif kind in ("linear", "pooler_linear"):
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_outputs))
        else:
            self.net = nn.Sequential(nn.Linear(hidden, 2048), nn.ReLU(), nn.Linear(2048, num_outputs))
            for layer in (self.net[0], self.net[2]):
                nn.init.normal_(layer.weight, std=0.005)  # type: ignore[arg-type]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


__all__ = ["ClassificationHead", "HeadKind", "BinaryHead", "HEADS", "BINARY_HEADS"]
