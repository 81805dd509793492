"""Per-example predictions of a run's held-out pass (and its OOD sets), written beside ``record.json``.

``--run.save_predictions true`` (or ``RunRecorder(save_predictions=True)``) writes ``predictions.jsonl`` for the
held-out split and ``predictions_ood_<name>.jsonl`` for each OOD set, one JSON object per example, in the
split's order:

- ``row``: the example's 0-based position among the official file's data rows; ``idx``: the file's own
  ``idx`` field where it has one (SuperGLUE), else ``row``;
- ``label`` and ``pred``: gold and predicted label (the label name for classification, the choice index for
  multiple choice, the value for regression); ``pred`` is exactly what the test metrics scored;
- ``scores``: the model's raw outputs (a logit per class, one logit for a one-logit binary head, a score per
  choice); ``probs``: their softmax (sigmoid for one logit: ``[p(0), p(1)]``). Regression has neither.

Each file is written atomically and named in the record with its SHA-256 (``record["predictions"]``), so any
metric can be recomputed from it, e.g. ``sklearn.metrics.f1_score(gold, pred, average="macro")``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from pl_petune.records import atomic_write_bytes

TEST_FILE = "predictions.jsonl"


def ood_file(name: str) -> str:
    """The file name of OOD set ``name``'s predictions."""
    return f"predictions_ood_{name}.jsonl"


def official_ids(spec: Any, split: str, data_dir: Optional[str], rows: Sequence[int]) -> list[Any]:
    """The official file's ``idx`` of each of ``rows`` (positions in the official ``split``), or the positions
    themselves when the file has no ``idx`` column (GLUE TSVs, whose ``index`` column counts rows the same way)."""
    from pl_petune.data.sources import load_split

    raw = load_split(spec, split, data_dir)
    if "idx" not in raw.column_names:
        return [int(r) for r in rows]
    idx = raw["idx"]
    return [idx[int(r)] for r in rows]


def rows(spec: Any, outputs: Any, labels: Any, preds: Any, positions: Sequence[int], ids: Sequence[Any],
         one_logit: bool = False) -> list[dict[str, Any]]:
    """One dict per example (see the module docstring).

    Args:
        spec: the training task's :class:`~pl_petune.tasks.TaskSpec` (label names, kind).
        outputs: raw model outputs, ``(n, classes)``, ``(n, choices)`` or ``(n,)``.
        labels: gold label ids (values for regression), ``(n,)``.
        preds: the model's predictions (``module.predictions(outputs)``), ``(n,)``.
        positions, ids: each example's row in the official file and its ``idx``.
        one_logit: the head has one output (BCE-with-logits binary head).
    """
    import torch

    out = torch.as_tensor(outputs).detach().float().cpu()
    gold = np.asarray(torch.as_tensor(labels).cpu())
    pred = np.asarray(torch.as_tensor(preds).cpu())
    if not len(out) == len(gold) == len(pred) == len(positions) == len(ids):
        raise ValueError(f"predictions: {len(out)} outputs, {len(gold)} labels, {len(pred)} predictions and "
                         f"{len(positions)} rows do not pair up")
    regression = spec.kind == "regression"
    if regression:
        probs = None
    elif one_logit:
        p1 = torch.sigmoid(out)
        probs = torch.stack([1 - p1, p1], dim=-1)
    else:
        probs = torch.softmax(out, dim=-1)
    names = list(spec.labels) if spec.kind == "classification" else None
    result = []
    for i in range(len(out)):
        row: dict[str, Any] = {"row": int(positions[i]), "idx": ids[i]}
        if regression:
            row["label"], row["pred"] = float(gold[i]), float(pred[i])
        elif names is not None:
            row["label"], row["pred"] = names[int(gold[i])], names[int(pred[i])]
        else:
            row["label"], row["pred"] = int(gold[i]), int(pred[i])
        if probs is not None:
            row["scores"] = out[i].reshape(-1).tolist()
            row["probs"] = probs[i].reshape(-1).tolist()
        result.append(row)
    return result


class Capture:
    """The outputs of a held-out pass, batch by batch, taken from the test step's own forward call (a forward
    hook), so the file holds exactly what the metrics scored; :meth:`write` writes the files.

    Args:
        module: the :class:`~pl_petune.methods.PetuneModule` being tested.
    """

    def __init__(self, module: Any) -> None:
        self.module = module
        self._outputs: list[Any] = []
        self._batches: list[tuple[Any, Any]] = []
        self._hook: Any = module.register_forward_hook(lambda _m, _args, out: self._outputs.append(out.detach()))

    def batch_end(self, labels: Any, batch_idx: int) -> None:
        """Pair the batch's forward output with its labels.

        Raises:
            PetuneError: the test step made no forward call with one row per example.
        """
        from pl_petune.errors import PetuneError

        if not self._outputs or len(self._outputs[-1]) != len(labels):
            n = len(self._outputs)
            self.stop()
            raise PetuneError(f"run.save_predictions: test batch {batch_idx} gave {n} forward output(s), none with "
                              f"one row per example ({len(labels)}); this module's test step does not call forward "
                              "once per batch")
        self._batches.append((self._outputs[-1].cpu(), labels.detach().cpu()))
        self._outputs = []

    def stop(self) -> None:
        """Remove the hook (before the OOD passes, which call forward too)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def write(self, run_dir: Path, dm: Any, ood: dict[str, Any]) -> dict[str, Any]:
        """Write the held-out file and one file per OOD set (``{name: (outputs, mapped labels)}``) into
        ``run_dir``; returns the record's ``predictions`` entries."""
        import torch

        from pl_petune.tasks import get_task

        self.stop()
        model, one_logit = self.module, bool(getattr(self.module, "one_logit", False))
        src, idx = dm.split().parts["test"]
        outputs = torch.cat([o for o, _ in self._batches]) if self._batches else torch.zeros(0)
        labels = torch.cat([y for _, y in self._batches]) if self._batches else torch.zeros(0)
        positions = [int(i) for i in idx]
        examples = rows(dm.spec, outputs, labels, model.predictions(outputs), positions,
                        official_ids(dm.spec, src, dm.data_dir, positions), one_logit)
        out = {"test": write(Path(run_dir) / TEST_FILE, examples, f"{dm.task} {src}")}
        for name, (raw, mapped) in ood.items():
            o = dm.ood[name]
            positions = list(range(len(mapped)))
            examples = rows(dm.spec, raw, mapped, model.predictions(raw), positions,
                            official_ids(get_task(o.task), o.split, dm.data_dir, positions), one_logit)
            out[f"ood/{name}"] = write(Path(run_dir) / ood_file(name), examples, f"{o.task} {o.split}")
        self._batches = []
        return out


def write(path: Path, examples: Sequence[dict[str, Any]], split: str) -> dict[str, Any]:
    """Write ``examples`` as JSON lines to ``path`` atomically; returns the record's entry for the file."""
    data = "".join(json.dumps(r, sort_keys=True, default=_plain) + "\n" for r in examples).encode("utf-8")
    atomic_write_bytes(path, data)
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "rows": len(examples), "split": split}


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def read(path: str | Path) -> list[dict[str, Any]]:
    """The examples of a predictions file (one dict per line)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


__all__ = ["TEST_FILE", "Capture", "ood_file", "official_ids", "rows", "write", "read"]
