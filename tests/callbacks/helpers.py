"""Plain Lightning modules (not pl_petune's) for the callback tests, and a tiny PET (LoRA-like) contract."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

FEATURES, HIDDEN, CLASSES = 8, 16, 2


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(HIDDEN, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + torch.tanh(self.dense(x)))


class Backbone(nn.Module):
    def __init__(self, layers: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, HIDDEN)
        self.layer = nn.ModuleList(Block() for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.layer:
            h = block(h)
        return h


class TinyModule(L.LightningModule):
    """A plain LightningModule: ``backbone`` + ``head``, AdamW over trainable params, optional warmup schedule."""

    def __init__(self, lr: float = 1e-2, schedule: bool = False, head: str = "linear", wd: float = 0.01) -> None:
        super().__init__()
        self.lr, self.schedule, self.wd = lr, schedule, wd
        self.backbone = Backbone()
        if head == "linear":
            self.head = nn.Linear(HIDDEN, CLASSES)
        else:
            self.head = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        opt = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr, weight_decay=self.wd)
        if not self.schedule:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class LoRALinear(nn.Module):
    """``base(x) + B A x``; A random, B zero (as LoRA initialises)."""

    def __init__(self, base: nn.Linear, r: int = 2) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) * 0.1)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.lora_A.t() @ self.lora_B.t()


class TinyLoRAModule(TinyModule):
    """Implements the PET contract: ``pet_parameter_names()`` and ``drop_pet_layers()``; trains LoRA + head."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for block in self.backbone.layer:
            block.dense = LoRALinear(block.dense)
        for n, p in self.named_parameters():
            p.requires_grad_("lora_" in n or n.startswith("head."))

    def pet_parameter_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if "lora_" in n]

    def drop_pet_layers(self) -> None:
        for block in self.backbone.layer:
            if isinstance(block.dense, LoRALinear):
                block.dense = block.dense.base


def make_data(n: int = 64, seed: int = 0, batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    split = int(n * 0.75)
    train = DataLoader(TensorDataset(x[:split], y[:split]), batch_size=batch_size, shuffle=False)
    dev = DataLoader(TensorDataset(x[split:], y[split:]), batch_size=batch_size, shuffle=False)
    return train, dev


def trainer_kwargs(tmp_path, **kw) -> dict:
    base = dict(accelerator="cpu", devices=1, max_epochs=4, logger=False, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                deterministic=True, default_root_dir=str(tmp_path))
    base.update(kw)
    return base


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Interrupt(L.Callback):
    """Raises at the start of ``epoch`` (after last.ckpt of the previous epoch was written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"interrupted at epoch {self.epoch}")


class Probe(L.Callback):
    """Records the trainable set and selected weights at each epoch's end."""

    def __init__(self) -> None:
        self.trainable: dict[int, list[str]] = {}
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        e = trainer.current_epoch
        self.trainable[e] = [n for n, p in pl_module.named_parameters() if p.requires_grad]
        self.weights[e] = snapshot(pl_module)


def fit(model, callbacks, tmp_path, max_epochs: int = 3, ckpt_path=None, **kw) -> L.Trainer:
    """Fit ``model`` on :func:`make_data` with ``callbacks``; returns the trainer."""
    train, dev = make_data()
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=max_epochs, callbacks=callbacks, **kw))
    trainer.fit(model, train, dev, ckpt_path=ckpt_path)
    return trainer
