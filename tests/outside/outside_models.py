"""An outside project's own modules: nothing here comes from pl_petune (only its callbacks are under test).

- :class:`MLP`: ``encoder`` (embedding, indexed layers, a pooler) and ``fc``; optionally a LoRA-like PET of its
  own (``pet_parameter_names`` / ``drop_pet_layers``) and weights loaded in ``setup`` or ``configure_model``.
- :class:`PeftSeqCls`: a tiny Hugging Face ``BertForSequenceClassification`` wrapped by PEFT LoRA with
  ``task_type="SEQ_CLS"``; ``drop_pet_layers`` is ``self.model = self.model.unload()``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

FEATURES, HIDDEN, CLASSES, LAYERS = 6, 12, 3, 3


class Adapter(nn.Module):
    """``base(x) + up(down(x))``, up starts at zero."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Parameter(torch.randn(2, base.in_features) * 0.2)
        self.up = nn.Parameter(torch.zeros(base.out_features, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.down.t() @ self.up.t()


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, HIDDEN)
        self.layers = nn.ModuleList(nn.Linear(HIDDEN, HIDDEN) for _ in range(LAYERS))
        self.pooler = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.embed(x))
        for layer in self.layers:
            h = h + torch.tanh(layer(h))
        return torch.tanh(self.pooler(h))


def pretrained_weights(seed: int = 123) -> dict[str, torch.Tensor]:
    """The outside project's "pretrained" encoder (what its module loads in setup or configure_model)."""
    torch.manual_seed(seed)
    return Encoder().state_dict()


class MLP(L.LightningModule):
    """``encoder`` + ``fc``, AdamW over the parameters that require grad (or over all, ``optimize_all``).

    Args:
        pet: add adapters to every encoder layer and train only them and ``fc`` (the PET contract).
        load_in: load :func:`pretrained_weights` into the encoder in ``"setup"`` or ``"configure_model"``.
        optimize_all: ``configure_optimizers`` takes every parameter, frozen or not.
        scheduler: ``"none"``, ``"onecycle"`` or ``"lambda"``.
    """

    def __init__(self, pet: bool = False, load_in: Optional[str] = None, optimize_all: bool = False,
                 scheduler: str = "none", lr: float = 1e-2) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.fc = nn.Linear(HIDDEN, CLASSES)
        self.load_in, self.optimize_all, self.scheduler, self.lr = load_in, optimize_all, scheduler, lr
        self.pet = pet
        if pet:
            self._add_pet()

    def _add_pet(self) -> None:
        for i, layer in enumerate(self.encoder.layers):
            self.encoder.layers[i] = Adapter(layer)
        for n, p in self.named_parameters():
            p.requires_grad_(".down" in n or ".up" in n or n.startswith("fc."))

    def _load_pretrained(self) -> None:
        target = dict(self.encoder.named_parameters())
        with torch.no_grad():
            for k, v in pretrained_weights().items():
                target[k if k in target else _adapter_name(k)].copy_(v)

    def setup(self, stage: str) -> None:
        if self.load_in == "setup":
            self._load_pretrained()

    def configure_model(self) -> None:
        if self.load_in == "configure_model":
            self._load_pretrained()

    def pet_parameter_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if ".down" in n or ".up" in n]

    def drop_pet_layers(self) -> None:
        for i, layer in enumerate(self.encoder.layers):
            if isinstance(layer, Adapter):
                self.encoder.layers[i] = layer.base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> Any:
        params = list(self.parameters()) if self.optimize_all else [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        if self.scheduler == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=1000)
        elif self.scheduler == "lambda":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        else:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _adapter_name(key: str) -> str:
    # "layers.0.weight" -> "layers.0.base.weight"
    head, _, leaf = key.rpartition(".")
    return f"{head}.base.{leaf}"


def data(n: int = 60, seed: int = 0, batch_size: int = 10) -> tuple[DataLoader, DataLoader]:
    """A separable 3-class problem: (train, dev) loaders of ``(x, y)`` tuples."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    y = (x[:, 0] > 0.4).long() + (x[:, 1] > 0.4).long()
    cut = int(n * 0.75)
    return (DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=batch_size),
            DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=batch_size))


def trainer(tmp_path, **kw: Any) -> L.Trainer:
    """A plain Lightning Trainer on the CPU, quiet, deterministic."""
    base: dict[str, Any] = dict(accelerator="cpu", devices=1, max_epochs=4, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                                deterministic=True, default_root_dir=str(tmp_path))
    base.update(kw)
    return L.Trainer(**base)


def state_sha(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Stop(L.Callback):
    """Raises at the start of ``epoch`` (after the previous epoch's last.ckpt was written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"stopped at epoch {self.epoch}")


class Seen(L.Callback):
    """Records the trainable names and a copy of the weights at each epoch's start and end."""

    def __init__(self) -> None:
        self.start: dict[int, dict[str, torch.Tensor]] = {}
        self.end: dict[int, dict[str, torch.Tensor]] = {}
        self.trainable: dict[int, list[str]] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.trainable[trainer.current_epoch] = [n for n, p in pl_module.named_parameters() if p.requires_grad]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.state_dict().items()}


# ---- a Hugging Face model wrapped by PEFT LoRA, task_type="SEQ_CLS" ------------------------------------------
def tiny_bert_cls(attn: str = "eager", attention_dropout: float = 0.1, hidden_dropout: float = 0.1):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32, num_labels=2, attention_probs_dropout_prob=attention_dropout,
                     hidden_dropout_prob=hidden_dropout, attn_implementation=attn)
    return BertForSequenceClassification(cfg)


class PeftSeqCls(L.LightningModule):
    """A PEFT LoRA model for sequence classification, as the PEFT docs build it."""

    def __init__(self, lr: float = 5e-3) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model

        self.lr = lr
        self.model = get_peft_model(tiny_bert_cls(), LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4,
                                                                target_modules=["query", "value"]))

    def pet_parameter_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if "lora_" in n]

    def drop_pet_layers(self) -> None:
        self.model = self.model.unload()

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.model(**batch).loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val_loss", self.model(**batch).loss)

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def token_batches(n: int = 24, seed: int = 0, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (n, 10), generator=g)
    labels = (ids[:, 1] % 2).long()
    rows = [{"input_ids": ids[i], "attention_mask": torch.ones(10, dtype=torch.long), "labels": labels[i]}
            for i in range(n)]
    return DataLoader(rows, batch_size=batch_size)
