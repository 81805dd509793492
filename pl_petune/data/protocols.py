"""Evaluation protocols: pure functions from label arrays and a seed to index splits.

Each protocol returns a :class:`Split`: for ``train``, ``dev`` (model selection, early stopping) and
``test`` (reported once), the source split (``"train"`` or ``"dev"``, the official files) and the row
indices taken from it.

- ``train_split`` (default, the fair protocol of Chen et al. 2022): a seeded, stratified 90/10 split of the
  official train set gives train/dev; the official dev set is the test set.
- ``petuning``: parity with the PETuning code (``train_test_split(test_size=0.1, shuffle=False)``): dev is
  the *last* 10 % of train, unshuffled and the same for every seed; test is the official dev set.
- ``dev_split``: the paper's pilot study: the official dev set split in half, seeded and stratified; dev1
  selects, dev2 is reported; train is the whole official train set.
- ``leaky``: what the paper criticises: the official dev set both selects and is reported. Only for
  reproducing that finding; records and reports flag it.
- ``dev_split_leaky``: the pilot study's "2-2" cell (Revisiting PETuning, Table 1): the halves of ``dev_split``
  (same seed, same rows), but dev2 both selects and is reported. Leaky, flagged like ``leaky``; it is what makes
  the 2-2 cell comparable with the 1-2 cell, which reports the same dev2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pl_petune.errors import PetuneError

PROTOCOLS = ("train_split", "petuning", "dev_split", "leaky", "dev_split_leaky")
LEAKY = frozenset({"leaky", "dev_split_leaky"})


class SplitError(PetuneError, ValueError):
    """A split that cannot be made (unknown protocol, too few examples to stratify, ...)."""


@dataclass(frozen=True)
class Split:
    protocol: str
    parts: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)

    @property
    def leaky(self) -> bool:
        return self.protocol in LEAKY

    def sizes(self) -> dict[str, int]:
        return {k: int(len(v[1])) for k, v in self.parts.items()}


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise SplitError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    return protocol


def _stratify_labels(labels: Sequence, regression: bool) -> np.ndarray | None:
    y = np.asarray(labels)
    if regression:
        # stratify a continuous target by its quintiles
        edges = np.quantile(y, [0.2, 0.4, 0.6, 0.8])
        return np.digitize(y, edges)
    return y


def stratified_split(labels: Sequence, fraction: float, seed: int, regression: bool = False,
                     what: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``range(len(labels))`` into (keep, held) with ``fraction`` held.

    Uses scikit-learn's ``train_test_split``; the result depends only on the labels, the fraction and the seed.
    """
    from sklearn.model_selection import train_test_split

    n = len(labels)
    if not 0.0 < fraction < 1.0:
        raise SplitError(f"split fraction {fraction!r} must be in (0, 1) (data.dev_fraction)")
    strat = _stratify_labels(labels, regression)
    n_held = math.ceil(fraction * n)
    classes, counts = np.unique(strat, return_counts=True)  # type: ignore[call-overload]
    if n_held < len(classes) or n - n_held < len(classes) or counts.min() < 2:
        rare = classes[counts.argmin()].item()
        raise SplitError(
            f"cannot stratify {n} {what} examples into {n_held} held out: class {rare!r} has "
            f"{counts.min()} example(s) and there are {len(classes)} classes; use more data or another protocol"
        )
    idx = np.arange(n)
    keep, held = train_test_split(idx, test_size=n_held, random_state=seed, shuffle=True, stratify=strat)
    return np.sort(keep), np.sort(held)


def make_split(protocol: str, train_labels: Sequence | None, dev_labels: Sequence, seed: int,
               dev_fraction: float = 0.1, regression: bool = False) -> Split:
    """The index split of ``protocol`` (see the module docstring)."""
    check_protocol(protocol)
    n_dev = len(dev_labels)
    if train_labels is None:
        raise SplitError(f"protocol {protocol!r} needs the task's train split, which is missing")
    n_train = len(train_labels)
    if protocol == "train_split":
        keep, held = stratified_split(train_labels, dev_fraction, seed, regression, "train")
        parts = {"train": ("train", keep), "dev": ("train", held), "test": ("dev", np.arange(n_dev))}
    elif protocol == "petuning":
        # datasets' train_test_split(test_size=0.1, shuffle=False): the last ceil(0.1 n) rows
        n_held = math.ceil(dev_fraction * n_train)
        parts = {"train": ("train", np.arange(n_train - n_held)),
                 "dev": ("train", np.arange(n_train - n_held, n_train)),
                 "test": ("dev", np.arange(n_dev))}
    elif protocol in ("dev_split", "dev_split_leaky"):
        dev1, dev2 = stratified_split(dev_labels, 0.5, seed, regression, "dev")
        select = dev2 if protocol == "dev_split_leaky" else dev1
        parts = {"train": ("train", np.arange(n_train)), "dev": ("dev", select), "test": ("dev", dev2)}
    else:  # leaky
        parts = {"train": ("train", np.arange(n_train)), "dev": ("dev", np.arange(n_dev)),
                 "test": ("dev", np.arange(n_dev))}
    return Split(protocol, parts)


def limit_train(split: Split, n: int | None, seed: int, labels: Sequence) -> Split:
    """Keep ``n`` training examples (a seeded, stratified subset), for data-size studies."""
    if n is None:
        return split
    src, idx = split.parts["train"]
    if n <= 0:
        raise SplitError(f"train_limit {n} must be positive")
    if n >= len(idx):
        return split
    sub_labels = np.asarray(labels)[idx]
    n_classes = len(np.unique(sub_labels))
    if n < n_classes:
        raise SplitError(f"train_limit {n} is smaller than the number of classes ({n_classes}); "
                         f"use at least {n_classes}")
    _, take = stratified_split(sub_labels, n / len(idx), seed, False, "train")
    parts = dict(split.parts)
    parts["train"] = (src, idx[take])
    return Split(split.protocol, parts)
