"""The fast paths are correct: length-grouped batches, the compile switch, no state for frozen parameters.

No timings here (the machine is shared); ``benchmarks/`` measures speed, as ratios within one process.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pl_petune.data.module import EpochSeededSampler, LengthGroupedSampler, TaskDataModule
from pl_petune.methods import METHODS


def _lengths(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(5, 120, n).tolist()


def _padding(order: list[int], lengths: list[int], batch: int) -> int:
    """Pad tokens dynamic padding adds when ``order`` is cut into batches of ``batch``."""
    total = 0
    for i in range(0, len(order), batch):
        lens = [lengths[j] for j in order[i:i + batch]]
        total += max(lens) * len(lens) - sum(lens)
    return total


@pytest.mark.parametrize("n,batch,window", [(1, 4, 2), (37, 8, 2), (64, 8, 3), (250, 16, 50)])
def test_length_grouped_order_is_a_permutation(n, batch, window):
    order = list(LengthGroupedSampler(_lengths(n), batch, seed=3, window=window))
    assert sorted(order) == list(range(n))


def test_length_grouped_order_is_a_function_of_seed_and_epoch():
    lengths = _lengths(200)
    a = LengthGroupedSampler(lengths, 8, seed=1, window=4)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert first != second  # a new epoch reshuffles
    resumed = LengthGroupedSampler(lengths, 8, seed=1, window=4)
    resumed.set_epoch(1)  # what Lightning does on resume before the epoch starts
    assert list(resumed) == second
    assert list(LengthGroupedSampler(lengths, 8, seed=2, window=4)) != first


def test_length_grouped_batches_pad_less_and_keep_the_partial_batch_last():
    lengths, batch = _lengths(203, seed=5), 8
    grouped = list(LengthGroupedSampler(lengths, batch, seed=0, window=10))
    plain = list(EpochSeededSampler(len(lengths), seed=0))
    assert _padding(grouped, lengths, batch) < 0.5 * _padding(plain, lengths, batch)
    # 203 = 25 full batches + 3: the 3 leftovers come last, so no later batch straddles a boundary
    assert len(grouped) - (len(grouped) // batch) * batch == 3
    # inside one sorting window, each full batch is sorted longest first
    first_batch = [lengths[i] for i in grouped[:batch]]
    assert first_batch == sorted(first_batch, reverse=True)


def test_length_grouped_sampler_refuses_a_zero_batch():
    from pl_petune.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size"):
        LengthGroupedSampler([3, 4], 0, seed=0)


def test_datamodule_group_by_length_wires_the_sampler_and_pads_less(tiny_bert, data_dir):
    def loader(group: bool):
        dm = TaskDataModule("rte", data_dir=data_dir, tokenizer=tiny_bert, batch_size=16, data_seed=4,
                            train_limit=320, group_by_length=group)
        dm.setup("fit")
        return dm.train_dataloader()

    grouped, plain = loader(True), loader(False)
    assert isinstance(grouped.sampler, LengthGroupedSampler)
    assert type(plain.sampler) is EpochSeededSampler
    assert sorted(grouped.sampler) == sorted(plain.sampler)  # same examples, another order

    def pad_tokens(dl) -> int:
        return sum(int((b["attention_mask"] == 0).sum()) for b in dl)

    assert pad_tokens(grouped) < 0.5 * pad_tokens(plain)


def test_compile_flag_compiles_the_backbone_in_place(tiny_bert):
    eager = METHODS["lora"](task="cb", backbone=tiny_bert, r=2)
    eager.configure_model()
    assert getattr(eager.backbone, "_compiled_call_impl", None) is None  # off by default
    model = METHODS["lora"](task="cb", backbone=tiny_bert, r=2, compile=True)
    assert getattr(model.backbone, "_compiled_call_impl", None) is None  # not before the Trainer asks
    model.configure_model()
    assert model.backbone._compiled_call_impl is not None
    model.configure_model()  # a second fit/test does not wrap it twice
    # in place: parameter names, hence checkpoints, are the eager module's (no ``_orig_mod.`` prefix)
    assert list(model.state_dict()) == list(eager.state_dict())
    eager.load_state_dict(model.state_dict(), strict=True)
    assert model.hparams.compile is True


def _batches(n: int = 2):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(1000, 5000, (4, 12), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                    "token_type_ids": torch.zeros_like(ids), "labels": torch.tensor([0, 1, 2, 1])})
    return out


@pytest.mark.parametrize("method,kwargs", [("lora", {"r": 2}), ("bitfit", {}), ("adapter", {"reduction_factor": 4}),
                                           ("linear_probe", {})])
def test_frozen_parameters_get_no_grad_and_no_optimizer_state(tiny_bert, method, kwargs):
    model = METHODS[method](task="cb", backbone=tiny_bert, lr=1e-3, **kwargs)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1)
    trainer.fit(model, DataLoader(_batches(), batch_size=None))
    opt = trainer.optimizers[0]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and in_opt == trainable
    assert {id(p) for p in opt.state} == trainable  # AdamW moments exist for the trainable ones only
    assert opt.defaults["fused"] is True  # one fused kernel for the update (fp32 on CPU)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


@pytest.mark.slow
def test_compiled_backbone_computes_what_the_eager_one_does(tiny_bert):
    """A real ``torch.compile`` (inductor builds C++ on CPU: about 20 s on a tiny model, minutes when loaded)."""
    eager = METHODS["lora"](task="cb", backbone=tiny_bert, r=2)
    model = METHODS["lora"](task="cb", backbone=tiny_bert, r=2, compile=True)
    model.load_state_dict(eager.state_dict())
    model.configure_model()
    eager.eval()
    model.eval()
    ids = torch.randint(1000, 5000, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, torch.ones_like(ids)), eager(ids, torch.ones_like(ids)))
