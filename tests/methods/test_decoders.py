"""Decoder LLMs (Llama, Qwen2, Mistral, GPT-2) as classification backbones, on tiny random configs (no download).

The head reads the last kept token (either padding side), positions count kept tokens only, a tokenizer without a
pad token pads with its EOS, PEFT tuners go on the attention and MLP projections, and three families run
``petune fit`` -> test -> record, EH-FT and LP-FT included.
"""

from __future__ import annotations

import json
from pathlib import Path

from pl_petune.packaged import config_args
import pytest
import torch

from pl_petune.cli import main
from pl_petune.errors import ConfigError
from pl_petune.methods import METHODS
from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ("llama", "qwen2", "mistral", "gpt2")
PROJECTIONS = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
               "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
               "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
               "gpt2": ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]}


def _config(family: str):
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    shape = dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256)
    return {"llama": lambda: LlamaConfig(**shape), "qwen2": lambda: Qwen2Config(**shape),
            "mistral": lambda: MistralConfig(**shape, sliding_window=None),
            "gpt2": lambda: GPT2Config(vocab_size=30522, n_embd=32, n_layer=2, n_head=2, n_positions=256)}[family]()


@pytest.fixture(scope="session")
def decoders(tmp_path_factory) -> dict[str, str]:
    """Per family a local model folder: random weights, and the MiniLM WordPiece vocabulary as a tokenizer with
    *no pad token* ([SEP] is its EOS), the way Llama, Mistral and GPT-2 tokenizers ship."""
    from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerFast

    from pl_petune.backbones import resolve_backbone

    backend = AutoTokenizer.from_pretrained(resolve_backbone("minilm")).backend_tokenizer
    backend.no_padding()  # the WordPiece vocabulary without its [PAD] setting
    out = {}
    for family in FAMILIES:
        path = tmp_path_factory.mktemp(f"tiny_{family}")
        torch.manual_seed(0)
        AutoModel.from_config(_config(family)).save_pretrained(path)
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="[SEP]",
                                      bos_token="[CLS]", padding_side="left" if family == "llama" else "right")
        assert tok.pad_token is None
        tok.save_pretrained(path)
        out[family] = str(path)
    return out


def _rows(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[101, *torch.randint(1000, 5000, (n,), generator=g).tolist(), 102] for n in (9, 5, 7)]


def _pad(rows: list[list[int]], side: str, pad_id: int = 102) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, sl], mask[i, sl] = torch.tensor(r), 1
    return ids, mask


def test_a_tokenizer_without_pad_pads_with_its_eos(decoders):
    from pl_petune.backbones import load_tokenizer

    tok = load_tokenizer(decoders["llama"])
    assert tok.pad_token == tok.eos_token == "[SEP]"


def test_a_tokenizer_with_nothing_to_pad_with_is_refused(tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from pl_petune.backbones import load_tokenizer, resolve_backbone

    backend = AutoTokenizer.from_pretrained(resolve_backbone("minilm")).backend_tokenizer
    backend.no_padding()
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="no pad, eos or unk token"):
        load_tokenizer(str(tmp_path))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_head_reads_the_last_kept_token_whatever_the_padding(family, decoders):
    """Each row's features equal those of the row run alone (no padding), padded on the left or on the right,
    with pad id = EOS = the row's own last token (a search for the pad id would stop too early)."""
    model = METHODS["frozen"](task="cb", backbone=decoders[family]).eval()
    rows = _rows()
    with torch.no_grad():
        alone = torch.cat([model.encode(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)) for r in rows])
        for side in ("right", "left"):
            ids, mask = _pad(rows, side)
            feats = model.encode(ids, mask)
            assert torch.allclose(feats, alone, atol=1e-5), side
            hidden = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
            last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)
            if side == "right":  # it is the last kept position's state, not position -1's
                assert torch.allclose(feats, hidden[torch.arange(3), last], atol=1e-5)
                assert not torch.allclose(feats[1], hidden[1, -1], atol=1e-4)


def test_an_encoder_still_reads_its_first_token(tiny_bert):
    model = METHODS["frozen"](task="cb", backbone=tiny_bert).eval()
    ids, mask = _pad(_rows(), "right", pad_id=0)
    with torch.no_grad():
        hidden = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(model.encode(ids, mask), hidden[:, 0])


def test_hidden_dropout_is_refused_where_the_architecture_has_none(decoders):
    with pytest.raises(ConfigError, match="hidden_dropout applies to BERT-family backbones; the 'llama' backbone"):
        METHODS["finetune"](task="cb", backbone=decoders["llama"], hidden_dropout=0.2)


def _steps(model, n: int = 2) -> None:
    model.train()
    opt = torch.optim.AdamW(model.param_groups(), lr=1e-2)
    for i in range(n):
        ids, mask = _pad(_rows(i), "right")
        loss = model.loss(model(ids, mask), torch.tensor([0, 1, 2]))
        opt.zero_grad()
        loss.backward()
        opt.step()


# tuner -> (method, peft arguments given the family's projections, the name fragments that must train)
TUNER_CASES = {
    "peft_lora": ("peft_lora", lambda p: {"r": 2, "target_modules": p}, ("lora_A", "lora_B")),
    "dora": ("dora", lambda p: {"r": 2, "target_modules": p}, ("lora_A", "lora_B", "lora_magnitude_vector")),
    "vera": ("vera", lambda p: {"r": 4}, ("vera_lambda_b", "vera_lambda_d")),
    "loha": ("loha", lambda p: {"r": 2, "target_modules": p}, ("hada_",)),
    "peft_ia3": ("peft_ia3", lambda p: {}, ("ia3_l",)),
    "ln_tuning": ("ln_tuning", lambda p: {}, ("ln_tuning_layers",)),
    "peft_prompt": ("peft_prompt", lambda p: {"num_virtual_tokens": 3}, ("prompt_encoder",)),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", list(TUNER_CASES))
def test_tuners_on_decoder_projections_train_exactly_their_parameters(case, family, decoders):
    method, args, fragments = TUNER_CASES[case]
    if case == "loha" and family == "gpt2":  # PEFT's LoHa has no Conv1D layer: refused in one line
        with pytest.raises(ConfigError, match=r"'loha' .*\(gpt2\): Target module .*Conv1D.* not supported"):
            METHODS[method](task="cb", backbone=decoders[family], peft=args(PROJECTIONS[family]))
        return
    model = METHODS[method](task="cb", backbone=decoders[family], peft=args(PROJECTIONS[family]), lr=1e-2)
    intended = {n for n, _ in model.named_parameters()
                if n.startswith("head.") or (".default" in n and any(f".{f}" in n for f in fragments))}
    assert set(model.trainable_names()) == intended
    if case in ("peft_lora", "dora", "loha"):  # every attention and MLP projection carries the adapter
        for proj in PROJECTIONS[family]:
            assert any(f"{proj}." in n for n in intended if not n.startswith("head.")), proj
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _steps(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == intended, (sorted(intended - changed)[:3], sorted(changed - intended)[:3])


def _fit(tmp: Path, recipe: str, backbone: str, data_dir: str, *extra: str) -> dict:
    store = tmp / "store.sqlite"
    argv = ["fit", *config_args(str(ROOT / "recipes" / "decoders" / recipe)), "--model.init_args.backbone", backbone,
            "--data.data_dir", data_dir, "--data.train_limit", "32", "--data.max_length", "48",
            "--data.batch_size", "8", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
            "--run.out_dir", str(tmp / "runs"), "--run.store", str(store), *extra]
    assert main(argv) == 0
    (rec,) = Store(store).records()
    return rec


@pytest.mark.parametrize("family", [pytest.param("llama", marks=pytest.mark.slow), "qwen2",
                                    pytest.param("gpt2", marks=pytest.mark.slow)])
def test_three_families_run_fit_test_record(family, decoders, data_dir, tmp_path):
    targets = json.dumps(PROJECTIONS[family])
    rec = _fit(tmp_path, "qwen2_lora.yaml", decoders[family], data_dir, "--model.init_args.lr", "1e-2",
               "--model.init_args.peft.target_modules", targets, "--model.init_args.peft.r", "2")
    assert rec["status"] == "complete" and rec["method"] == "peft_lora" and rec["backbone"] == decoders[family]
    assert rec["test_size"] == 56 and 0.0 <= rec["test_metrics"]["test/f1_macro"] <= 1.0
    model = METHODS["peft_lora"](task="cb", backbone=decoders[family], head="linear",
                                 peft={"r": 2, "lora_alpha": 16, "lora_dropout": 0.05,
                                       "target_modules": PROJECTIONS[family]})
    assert rec["trainable_params"] == model.parameter_report()["trainable_params"]


@pytest.mark.slow
def test_ehft_lora_on_a_decoder_ends_with_the_pretrained_backbone_and_trains_it(decoders, data_dir, tmp_path):
    rec = _fit(tmp_path, "qwen2_ehft_lora.yaml", decoders["qwen2"], data_dir, "--trainer.max_epochs", "3",
               "--model.init_args.peft.r", "2", "--run.keep_checkpoints", "true")
    assert rec["status"] == "complete" and rec["method"] == "peft_lora"
    from pl_petune.methods import FullFinetune

    state = torch.load(rec["extra"]["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert not any("lora_" in k for k in state)  # stage 2: the LoRA layers are gone
    pristine = FullFinetune(task="cb", backbone=decoders["qwen2"]).state_dict()
    backbone = [k for k in pristine if k.startswith("backbone.")]
    assert set(backbone) <= set(state)
    assert any(not torch.equal(state[k], pristine[k]) for k in backbone)  # stage 2 trained the decoder


@pytest.mark.slow
def test_lpft_on_a_decoder(decoders, data_dir, tmp_path):
    rec = _fit(tmp_path, "qwen2_lpft.yaml", decoders["gpt2"], data_dir, "--trainer.max_epochs", "3")
    assert rec["status"] == "complete" and rec["method"] == "finetune"
