"""The seeds of a module's construction and of its resume: ``init_seed`` in a forked RNG, the dropout RNG in the
checkpoint.

Everything built in a module's ``__init__`` (backbone load, head, PET layers, random masks) runs under
``init_seed`` in a forked RNG (:func:`seeded`), so it neither depends on nor disturbs the RNG that ``data_seed``
seeds (data order and dropout) on any device. A resumed fit continues the dropout stream where it stopped
(:func:`rng_state`, :func:`restore_rng_state`).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import torch


def _cuda_devices() -> list[int]:
    """CUDA devices whose generators a block could draw from: all of them once CUDA is initialised (or is the
    default device), none before (nothing can draw from a CUDA generator that does not exist yet)."""
    if not torch.cuda.is_available():
        return []
    if not torch.cuda.is_initialized() and torch.get_default_device().type == "cuda":
        torch.cuda.init()
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with the CPU generator (and every initialised CUDA generator) seeded to ``seed``, restoring
    every one of them afterwards.

    ``torch.manual_seed`` is not used: it also calls ``torch.cuda.manual_seed_all``, which, before CUDA is
    initialised, *queues* the seed and applies it when CUDA starts, after this block, so ``init_seed`` would
    silently become the seed of GPU dropout (issue 13). Only generators forked here are seeded here.
    """
    devices = _cuda_devices()
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        for device in devices:
            torch.cuda.default_generators[device].manual_seed(seed)
        yield


def rng_state() -> dict[str, Any]:
    """The CPU generator and, when CUDA is in use, every CUDA generator (GPU dropout draws there)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators :func:`rng_state` captured (as many CUDA ones as this machine has, with a warning
    when the count differs)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if len(cuda) != count:
            warnings.warn(f"the checkpoint holds {len(cuda)} CUDA generator states and this machine has "
                          f"{count} GPUs: restoring the first {min(len(cuda), count)}; the dropout stream of a "
                          "resumed run differs from an uninterrupted one", stacklevel=3)
        torch.cuda.set_rng_state_all(list(cuda)[:count])


__all__ = ["seeded", "rng_state", "restore_rng_state"]
