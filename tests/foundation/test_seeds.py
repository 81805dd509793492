"""init_seed and data_seed act independently."""

from __future__ import annotations

import torch

from pl_petune.methods import FullFinetune


def _head(model):
    return torch.cat([p.detach().flatten() for p in model.head.parameters()])


def test_init_seed_decides_head_and_nothing_else(tiny_bert):
    torch.manual_seed(123)
    a = FullFinetune(task="cb", backbone=tiny_bert, init_seed=1)
    after_a = torch.rand(3)  # the global RNG (data order, dropout) after building model a
    torch.manual_seed(123)
    b = FullFinetune(task="cb", backbone=tiny_bert, init_seed=1)
    torch.manual_seed(123)
    c = FullFinetune(task="cb", backbone=tiny_bert, init_seed=2)
    after_c = torch.rand(3)
    assert torch.equal(_head(a), _head(b))
    assert not torch.equal(_head(a), _head(c))
    assert torch.equal(after_a, after_c), "building the model must not consume the data seed's RNG"
    # pretrained weights are loaded, not initialised: identical whatever the init seed
    for (n, p), (_, q) in zip(a.backbone.named_parameters(), c.backbone.named_parameters()):
        assert torch.equal(p, q), n


# ---- init_seed touches no generator that training draws from afterwards, on any device (issue 13) ------------
import lightning as L  # noqa: E402
import pytest  # noqa: E402

from pl_petune.methods import get_method  # noqa: E402


@pytest.fixture
def cuda_seed_calls(monkeypatch):
    """Every CUDA (re)seed request, recorded instead of run. Without a GPU, ``torch.manual_seed`` still *queues*
    a CUDA seed (``torch.cuda.manual_seed_all`` → ``_lazy_call``) that CUDA applies when it starts: on a GPU,
    the last queued seed is the seed of dropout."""
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(("manual_seed_all", int(seed))))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append(("manual_seed", int(seed))))
    monkeypatch.setattr(torch.cuda, "seed_all", lambda: calls.append(("seed_all", -1)))
    return calls


@pytest.mark.parametrize("method", ["finetune", "adapter", "prefix", "lora", "random", "bitfit"])
def test_building_a_model_queues_no_cuda_seed(method, tiny_bert, cuda_seed_calls):
    L.seed_everything(7, verbose=False)  # what petune fit does with data.data_seed before building the model
    assert cuda_seed_calls == [("manual_seed_all", 7)]
    get_method(method)(task="cb", backbone=tiny_bert, init_seed=1234)
    assert cuda_seed_calls == [("manual_seed_all", 7)], "init_seed must not replace the data seed's CUDA seed"


def test_seeded_block_forks_and_restores_initialised_cuda_generators(monkeypatch):
    """Once CUDA is initialised, the init block seeds every device's generator and restores it afterwards."""
    from pl_petune.methods import seeding

    forked: list[list[int]] = []
    real_fork = torch.random.fork_rng

    def fork(devices=None, **kwargs):
        forked.append(list(devices))
        return real_fork(devices=[], **kwargs)

    monkeypatch.setattr(seeding, "_cuda_devices", lambda: [0, 1])
    monkeypatch.setattr(torch.random, "fork_rng", fork)
    seeded_devices: list[tuple[int, int]] = []

    class Gen:
        def __init__(self, i):
            self.i = i

        def manual_seed(self, seed):
            seeded_devices.append((self.i, seed))

    monkeypatch.setattr(torch.cuda, "default_generators", (Gen(0), Gen(1)), raising=False)
    with seeding.seeded(99):
        pass
    assert forked == [[0, 1]] and seeded_devices == [(0, 99), (1, 99)]


def _backbone_under_dropout(tiny_bert: str, init_seed: int, data_seed: int, device: str) -> torch.Tensor:
    L.seed_everything(data_seed, verbose=False)
    model = get_method("adapter")(task="cb", backbone=tiny_bert, init_seed=init_seed, hidden_dropout=0.3,
                                  init="identity").to(device)
    model.train()
    ids = torch.arange(100, 116, device=device).view(2, 8)
    return model.backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.detach().cpu()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_stream_follows_data_seed_not_init_seed(tiny_bert, device):
    """Identity-initialised adapters leave the pretrained function unchanged, so the backbone's output in train
    mode depends on the dropout masks alone: init_seed must not change them, data_seed must."""
    a = _backbone_under_dropout(tiny_bert, init_seed=1, data_seed=7, device=device)
    b = _backbone_under_dropout(tiny_bert, init_seed=2, data_seed=7, device=device)
    c = _backbone_under_dropout(tiny_bert, init_seed=1, data_seed=8, device=device)
    assert torch.equal(a, b), "changing init_seed changed the dropout stream"
    assert not torch.equal(a, c), "changing data_seed left the dropout stream unchanged"


# ---- a checkpoint carries the CUDA generators, so a GPU resume continues the dropout stream ----------------
def _fit_trainer(model):
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    from lightning.pytorch.trainer.states import TrainerFn

    trainer.state.fn = TrainerFn.FITTING
    model.trainer = trainer
    return trainer


def test_checkpoint_saves_and_restores_cuda_rng_states(tiny_bert, monkeypatch, tmp_path):
    model = get_method("finetune")(task="cb", backbone=tiny_bert, init_seed=1)
    states = [torch.arange(8, dtype=torch.uint8), torch.arange(8, 16, dtype=torch.uint8)]
    restored: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: restored.append(list(new)))
    ckpt: dict = {}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "c.ckpt")
    loaded = torch.load(tmp_path / "c.ckpt", weights_only=True)  # plain tensors: safe loading reads them
    assert [torch.equal(a, b) for a, b in zip(loaded["petune_rng"]["cuda"], states)] == [True, True]
    _fit_trainer(model)
    torch.rand(5)  # the CPU stream moves on; the load must put it back
    model.on_load_checkpoint(loaded)
    assert torch.equal(torch.get_rng_state(), loaded["petune_rng"]["torch"])
    assert len(restored) == 1 and all(torch.equal(a, b) for a, b in zip(restored[0], states))


def test_checkpoint_from_more_gpus_restores_what_fits_and_warns(tiny_bert, monkeypatch):
    model = get_method("finetune")(task="cb", backbone=tiny_bert, init_seed=1)
    restored: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: restored.append(list(new)))
    _fit_trainer(model)
    ckpt = {"petune_rng": {"torch": torch.get_rng_state(), "cuda": [torch.zeros(4, dtype=torch.uint8)] * 2}}
    with pytest.warns(UserWarning, match="2 CUDA generator states and this machine has 1 GPUs"):
        model.on_load_checkpoint(ckpt)
    assert len(restored[0]) == 1


def test_cpu_only_checkpoint_has_no_cuda_state(tiny_bert, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = get_method("finetune")(task="cb", backbone=tiny_bert, init_seed=1)
    ckpt: dict = {}
    model.on_save_checkpoint(ckpt)
    assert set(ckpt["petune_rng"]) == {"torch"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_resume_continues_the_cuda_dropout_stream(tiny_bert):
    model = get_method("finetune")(task="cb", backbone=tiny_bert, init_seed=1).cuda()
    torch.cuda.manual_seed_all(5)
    torch.rand(3, device="cuda")
    ckpt: dict = {}
    model.on_save_checkpoint(ckpt)
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(123)
    _fit_trainer(model)
    model.on_load_checkpoint(ckpt)
    assert torch.equal(torch.rand(4, device="cuda"), expected)


def test_dropping_pet_layers_mid_fit_leaves_the_dropout_stream_alone(tiny_bert):
    """EH-FT's stage switch rebuilds a plain backbone during fit: the training RNG must not move."""
    model = get_method("adapter")(task="cb", backbone=tiny_bert, init_seed=1)
    torch.manual_seed(11)
    expected = torch.rand(4)
    torch.manual_seed(11)
    model.drop_pet_layers()
    assert torch.equal(torch.rand(4), expected)
