"""One inference loop: run a module over batches in eval mode without gradients, keep features and outputs.

Shared by :class:`~pl_petune.callbacks.SaveHeadFeatures` (the head's inputs), the L-BFGS probe of
:class:`~pl_petune.callbacks.HeadWarmStart` (the last head Linear's inputs) and, in pl_petune, OOD scoring
(the logits). Depends on torch only.

Example:
    >>> out = infer(model, loader, capture=model.head)    # out.features: what the head read; out.labels
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from torch import nn

Forward = Callable[[nn.Module, Any], Any]


@dataclass
class Inference:
    """What :func:`infer` collected, each on the CPU and concatenated over batches (``None`` when absent).

    Attributes:
        features: float32 rows the ``capture`` module received as its first positional input.
        outputs: float32 module outputs (a tensor, the ``.logits`` of a model output, or its first tensor).
        labels: the batch labels as given (class ids or regression targets).
    """

    features: Optional[torch.Tensor]
    outputs: Optional[torch.Tensor]
    labels: Optional[torch.Tensor]


def default_forward(module: nn.Module, batch: Any, label_key: str = "labels") -> Any:
    """``module(**batch_without_labels)`` for a mapping, ``module(batch[0])`` for a tuple or list, else
    ``module(batch)``."""
    if isinstance(batch, Mapping):
        return module(**{k: v for k, v in batch.items() if k != label_key})
    if isinstance(batch, (tuple, list)):
        return module(batch[0])
    return module(batch)


def batch_labels(batch: Any, label_key: str = "labels") -> Optional[torch.Tensor]:
    """The labels of a batch: ``batch[label_key]`` of a mapping, the second item of a tuple or list, or ``None``."""
    if isinstance(batch, Mapping):
        return batch.get(label_key)
    if isinstance(batch, (tuple, list)) and len(batch) > 1 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    return None


def _output_tensor(out: Any) -> Optional[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)):
        return next((o for o in out if isinstance(o, torch.Tensor)), None)
    return None


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def infer(module: nn.Module, batches: Iterable[Any], *, forward: Optional[Forward] = None,
          capture: Optional[nn.Module] = None, label_key: str = "labels",
          to_device: Optional[Callable[[Any], Any]] = None, keep_outputs: bool = True,
          limit: Optional[int] = None) -> Inference:
    """Run ``module`` over ``batches`` in eval mode under ``torch.no_grad`` and collect what it saw and said.

    The module's training mode is restored afterwards, also on error.

    Args:
        module: the model (a LightningModule or any ``nn.Module``).
        batches: an iterable of batches (a DataLoader).
        forward: ``fn(module, batch)`` running one batch; default :func:`default_forward`.
        capture: a submodule whose first positional input is recorded (a forward pre-hook, so the features
            are exactly what it read); ``None`` records no features.
        label_key: key of the labels in a mapping batch.
        to_device: moves a batch to the module's device (e.g. ``trainer.strategy.batch_to_device``); default:
            tensors are moved to the device of the module's first parameter.
        keep_outputs: also collect the outputs (logits).
        limit: stop after this many labelled examples (``None``: all); rows beyond it are cut off.

    Returns:
        An :class:`Inference`. With multiple-choice inputs the captured rows are ``examples × choices``.
    """
    forward = forward or (lambda m, b: default_forward(m, b, label_key))
    if to_device is None:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        to_device = lambda b: _to_device(b, device)  # noqa: E731
    feats: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    handle = capture.register_forward_pre_hook(lambda _m, args: feats.append(args[0].detach().float().cpu())) \
        if capture is not None else None
    was_training = module.training
    module.eval()
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                batch = to_device(batch)
                out = forward(module, batch)
                if keep_outputs:
                    t = _output_tensor(out)
                    if t is not None:
                        outs.append(t.detach().float().cpu())
                y = batch_labels(batch, label_key)
                if y is not None:
                    labels.append(y.detach().cpu())
                    seen += len(y)
                if limit is not None and seen >= limit:
                    break
    finally:
        module.train(was_training)
        if handle is not None:
            handle.remove()
    result = Inference(torch.cat(feats) if feats else None, torch.cat(outs) if outs else None,
                       torch.cat(labels) if labels else None)
    if limit is not None:
        for name in ("features", "outputs", "labels"):
            t = getattr(result, name)
            if t is not None and (result.labels is None or len(t) == len(result.labels)):
                setattr(result, name, t[:limit])
    return result


__all__ = ["Inference", "infer", "default_forward", "batch_labels"]
