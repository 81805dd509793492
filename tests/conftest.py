"""Shared fixtures: offline environment, tiny random backbones saved as local model folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PETUNE_TEST_DATA", ROOT.parent / "shared" / "data")).resolve()
TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=140)


def _save_tiny(path: Path, family: str) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, RobertaConfig, RobertaModel

    from pl_petune.backbones import resolve_backbone

    torch.manual_seed(0)
    if family == "bert":
        model = BertModel(BertConfig(**TINY))
    else:  # RoBERTa architecture with the BERT vocabulary (no RoBERTa tokenizer offline); pad id 0
        model = RobertaModel(RobertaConfig(**{**TINY, "max_position_embeddings": 142}, pad_token_id=0,
                                           bos_token_id=101, eos_token_id=102, type_vocab_size=1))
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_backbone("minilm")).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer, 32-hidden random BertModel with the MiniLM tokenizer, as a local model folder."""
    return str(_save_tiny(tmp_path_factory.mktemp("tiny_bert"), "bert"))


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> str:
    """A 2-layer, 32-hidden random RobertaModel (BERT vocabulary), as a local model folder."""
    return str(_save_tiny(tmp_path_factory.mktemp("tiny_roberta"), "roberta"))


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> str:
    """A 2-layer, 32-wide random T5Model (encoder-decoder) with the MiniLM tokenizer ([SEP] ends inputs)."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5Model

    from pl_petune.backbones import resolve_backbone

    path = tmp_path_factory.mktemp("tiny_t5")
    torch.manual_seed(0)
    T5Model(T5Config(vocab_size=30522, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2, pad_token_id=0,
                     eos_token_id=102, decoder_start_token_id=0)).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_backbone("minilm")).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def data_dir() -> str:
    if not (SHARED_DATA / "super_glue" / "CB" / "train.jsonl").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return str(SHARED_DATA)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tokenized caches and stores go to a per-session temp folder, never the user's home."""
    cache = tmp_path_factory.getbasetemp() / "petune_cache"
    monkeypatch.setenv("PETUNE_CACHE", str(cache))
