"""Cross-attention-only tuning on a tiny T5: exactly the cross-attention q/k/v/o and the head train, the head
reads the decoder state at the final kept token, the parameter report counts them, encoders are refused."""

from __future__ import annotations

import pytest
import torch

from pl_petune.errors import ConfigError
from pl_petune.methods import METHODS, CrossAttentionTuning


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (3, 9), generator=g)
    ids[:, -1] = 102
    ids[1, 5] = 102
    ids[1, 6:] = 0  # right padding: row 1 ends at position 5
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.tensor([0, 1, 2])}


def test_registered_and_trains_exactly_cross_attention_and_head(tiny_t5):
    assert METHODS["cross_attention"] is CrossAttentionTuning
    model = CrossAttentionTuning(task="cb", backbone=tiny_t5, lr=1e-2)
    expected = {f"backbone.decoder.block.{b}.layer.1.EncDecAttention.{p}.weight" for b in (0, 1)
                for p in "qkvo"} | {n for n, _ in model.named_parameters() if n.startswith("head.")}
    assert set(model.trainable_names()) == expected
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.param_groups(), lr=1e-2)
    model.train()
    b = _batch()
    model.loss(model(b["input_ids"], b["attention_mask"]), b["labels"]).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == expected


def test_parameter_report_counts_cross_attention_and_head(tiny_t5):
    model = CrossAttentionTuning(task="cb", backbone=tiny_t5)
    r = model.parameter_report()
    inner = 2 * 16  # num_heads x d_kv
    assert r["trainable_backbone_params"] == 2 * (3 * inner * 32 + 32 * inner)  # 2 blocks: q, k, v (32→32), o
    assert r["trainable_params"] == r["trainable_backbone_params"] + r["head_params"]
    assert r["added_params"] == 0 and r["total_params"] == sum(p.numel() for p in model.backbone.parameters())


def test_head_reads_decoder_state_at_the_final_kept_token(tiny_t5):
    model = CrossAttentionTuning(task="cb", backbone=tiny_t5).eval()
    b = _batch(1)
    with torch.no_grad():
        feats = model.encode(b["input_ids"], b["attention_mask"])
        # row by row without padding, T5ForSequenceClassification's way: decoder state at the last EOS
        for i in range(3):
            ids = b["input_ids"][i][b["attention_mask"][i].bool()][None]
            out = model.backbone(input_ids=ids, decoder_input_ids=model.backbone._shift_right(ids))
            eos = ids[0].eq(102).nonzero().max()
            assert torch.allclose(feats[i], out.last_hidden_state[0, eos], atol=1e-5)
        assert torch.allclose(model(b["input_ids"], b["attention_mask"]), model.head(feats))


def test_encoder_backbones_are_refused_in_one_line(tiny_bert):
    with pytest.raises(ConfigError, match="cross_attention needs an encoder-decoder backbone .*'bert' encoder"):
        CrossAttentionTuning(task="cb", backbone=tiny_bert)


def test_params_command_on_t5_small_shape(capsys):
    from pl_petune.cli import main

    assert main(["params", "--method", "cross_attention", "--backbone", "config:t5-small", "--json"]) == 0
    import json

    r = json.loads(capsys.readouterr().out)
    assert r["trainable_backbone_params"] == 6 * 4 * 512 * 512
