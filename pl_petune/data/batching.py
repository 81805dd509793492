"""Batches of a task: seeded sampling orders (resumable) and padding."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from pl_petune.errors import ConfigError


class EpochSeededSampler(Sampler[int]):
    """A shuffling sampler whose order is a pure function of (seed, epoch).

    Lightning calls ``set_epoch`` before every epoch, so a resumed run sees the same order as an
    uninterrupted one (a ``torch.Generator`` would restart from its seed on resume).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        return iter(rng.permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


class LengthGroupedSampler(EpochSeededSampler):
    """:class:`EpochSeededSampler`'s order with similar lengths batched together (less padding per batch).

    The epoch's seeded permutation is cut into windows of ``window`` batches; inside a window the indices are
    sorted by length (longest first), cut into batches, and the full batches of the whole epoch are shuffled
    with the same generator (a partial batch stays last, so the loader's batch boundaries are kept). The
    order is still a pure function of (seed, epoch), so resume sees the same batches.

    Args:
        lengths: the length of every example (for multiple choice, its longest choice).
        batch_size: the loader's batch size.
        seed: the data seed.
        window: batches per sorting window; larger groups lengths more tightly, smaller keeps more randomness.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window: int = 50) -> None:
        super().__init__(len(lengths), seed)
        if batch_size < 1 or window < 1:
            raise ConfigError(f"batch_size and window must be >= 1, got {batch_size} and {window}")
        self.lengths = np.asarray(lengths)
        self.batch_size, self.window = batch_size, window

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n)
        span = self.batch_size * self.window
        chunks = [order[i:i + span] for i in range(0, self.n, span)]
        # stable sort on the negated length: ties keep the seeded order
        order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks]) if chunks else order
        full = self.n // self.batch_size
        batches = order[: full * self.batch_size].reshape(full, self.batch_size)[rng.permutation(full)]
        return iter(np.concatenate([batches.reshape(-1), order[full * self.batch_size:]]).tolist())


class Collator:
    """Pads a batch to its longest sequence (or to ``max_length`` for PETuning's parity)."""

    def __init__(self, pad_id: int, pad_to: int | None = None) -> None:
        self.pad_id, self.pad_to = pad_id, pad_to

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        multiple_choice = isinstance(rows[0]["input_ids"][0], list)
        seqs = [s for r in rows for s in (r["input_ids"] if multiple_choice else [r["input_ids"]])]
        width = self.pad_to or max(len(s) for s in seqs)
        out: dict[str, torch.Tensor] = {}
        for key, pad in (("input_ids", self.pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key not in rows[0]:
                continue
            vals = [s for r in rows for s in (r[key] if multiple_choice else [r[key]])]
            t = torch.full((len(vals), width), pad, dtype=torch.long)
            for i, v in enumerate(vals):
                t[i, : len(v)] = torch.tensor(v[:width], dtype=torch.long)
            out[key] = t.view(len(rows), -1, width) if multiple_choice else t
        labels = [r["label"] for r in rows]
        out["labels"] = torch.tensor(labels, dtype=torch.float if isinstance(labels[0], float) else torch.long)
        return out
