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
