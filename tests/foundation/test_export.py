"""``petune export``: a trained run loads in someone else's code (PEFT's ``PeftModel.from_pretrained`` plus a
head rebuilt with plain PyTorch from ``head.json``) and gives the logits the run's own module gives."""

from __future__ import annotations

import json
from pathlib import Path

from pl_petune.packaged import config_args
import pytest
import torch

from pl_petune.cli import main
from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _fit(tmp: Path, backbone: str, data_dir: str, recipe: str, *extra: str) -> dict:
    store = tmp / "store.sqlite"
    argv = ["fit", *config_args(str(ROOT / "recipes" / recipe)), "--model.init_args.backbone", backbone,
            "--data.data_dir", data_dir, "--data.train_limit", "32", "--data.max_length", "48",
            "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--run.keep_checkpoints", "true",
            "--run.out_dir", str(tmp / "runs"), "--run.store", str(store), *extra]
    assert main(argv) == 0
    (rec,) = Store(store).records()
    return rec


def _plain_head(folder: Path) -> torch.nn.Module:
    """The head as another project would rebuild it: only head.json and head.safetensors, no pl_petune."""
    from safetensors.torch import load_file

    desc = json.loads((folder / "head.json").read_text())
    state = load_file(str(folder / "head.safetensors"))
    layers = []
    for spec in desc["layers"]:
        if spec["type"] == "linear":
            lin = torch.nn.Linear(spec["in"], spec["out"])
            lin.load_state_dict({"weight": state[spec["weight"]], "bias": state[spec["bias"]]})
            layers.append(lin)
        else:
            layers.append({"dropout": torch.nn.Dropout(spec.get("p", 0.0)), "tanh": torch.nn.Tanh(),
                           "relu": torch.nn.ReLU()}[spec["type"]])
    return torch.nn.Sequential(*layers).eval()


def _pool(desc: dict, out, mask: torch.Tensor) -> torch.Tensor:
    if desc["pooling"] == "pooler_output":
        return out.pooler_output
    hidden = out.last_hidden_state
    rows = torch.arange(hidden.shape[0])
    if desc["pooling"] == "last_kept_token":
        return hidden[rows, mask.shape[1] - 1 - mask.flip(-1).argmax(-1)]
    return hidden[rows, mask.argmax(-1)]


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1000, 5000, (3, 12), generator=g)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _theirs(folder: Path, backbone: str, b: dict[str, torch.Tensor]) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModel

    desc = json.loads((folder / "head.json").read_text())
    if desc["export"] == "peft_adapter":
        model = PeftModel.from_pretrained(AutoModel.from_pretrained(backbone), str(folder)).eval()
    else:
        model = AutoModel.from_pretrained(str(folder / "backbone")).eval()
    with torch.no_grad():
        return _plain_head(folder)(_pool(desc, model(**b), b["attention_mask"]))


def _ours(rec: dict, b: dict[str, torch.Tensor]) -> torch.Tensor:
    from pl_petune.export import load_module

    with torch.no_grad():
        return load_module(rec)(b["input_ids"], b["attention_mask"], b["token_type_ids"])


@pytest.mark.parametrize("recipe, extra", [
    ("peft/dora.yaml", ("--model.init_args.peft.r", "2")),
    # the head reads the pretrained pooler: head.json says so, and the PEFT model's pooler_output gives the logits
    ("peft/peft_lora.yaml", ("--model.init_args.peft.r", "2", "--model.init_args.head", "pooler_linear")),
    # PiSSA moved the adapter's share out of W at init: written as PEFT converts it, a rank-2r LoRA over the
    # pretrained W (it was written as the PiSSA adapter, which over the pretrained W counts that share twice)
    ("peft/pissa.yaml", ("--model.init_args.peft.r", "2")),
    # AdaLoRA: the rank pattern its allocator fixed travels in the checkpoint's module state
    pytest.param("peft/adalora.yaml", ("--trainer.max_epochs", "3", "--model.init_args.peft",
                                       "{init_r: 4, target_r: 2, total_step: 6, tinit: 0, tfinal: 1, deltaT: 1}"),
                 marks=pytest.mark.slow),
    # EH-FT: the LoRA layers are gone after the stage switch and stage 2 finetuned the backbone: a backbone folder
    ("methods/ehft_lora.yaml", ("--model.init_args.r", "2", "--trainer.max_epochs", "2")),
    # the same with AdapterHub's prefix in stage 1: no PEFT format needed once the prefix is dropped
    pytest.param("methods/ehft_prefix.yaml", ("--trainer.max_epochs", "2"), marks=pytest.mark.slow),
    pytest.param("peft/vera.yaml", (), marks=pytest.mark.slow),
    ("methods/lora.yaml", ("--model.init_args.r", "2")),
    pytest.param("methods/bitfit.yaml", (), marks=pytest.mark.slow),
])
def test_export_loads_with_peft_and_gives_the_same_logits(recipe, extra, tmp_path, tiny_bert, data_dir, capsys):
    rec = _fit(tmp_path, tiny_bert, data_dir, recipe, "--model.init_args.lr", "1e-2", *extra)
    out = tmp_path / "exported"
    assert main(["export", rec["run_key"], "--out", str(out), "--store", str(tmp_path / "store.sqlite")]) == 0
    assert f"run {rec['run_key']}" in capsys.readouterr().out
    desc = json.loads((out / "head.json").read_text())
    assert desc["run_key"] == rec["run_key"] and desc["checkpoint_sha256"] == rec["best_checkpoint_sha256"]
    if desc["export"] == "peft_adapter":
        assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    assert desc["export"] == ("backbone" if recipe.startswith("methods/ehft") or "bitfit" in recipe else "peft_adapter")
    assert desc["pooling"] == ("pooler_output" if "pooler_linear" in extra else "first_kept_token")
    b = _batch()
    theirs, ours = _theirs(out, tiny_bert, b), _ours(rec, b)
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=0)
    # the trained run is not the pretrained backbone plus a head: the export carries what was trained
    fresh = _theirs_fresh(out, tiny_bert, b)
    # AdaLoRA's B·E·A starts at 0 with A, B ~ N(0, 0.02²): after a few steps it moves the logits by ~1e-6
    assert not torch.allclose(fresh, ours, atol=1e-7 if "adalora" in recipe else 1e-4, rtol=0)
    assert list(tmp_path.glob(".exported.tmp-*")) == [] and list(tmp_path.glob("petune_init_*")) == []


def _theirs_fresh(folder: Path, backbone: str, b: dict[str, torch.Tensor]) -> torch.Tensor:
    from transformers import AutoModel

    desc = json.loads((folder / "head.json").read_text())
    with torch.no_grad():
        return _plain_head(folder)(_pool(desc, AutoModel.from_pretrained(backbone).eval()(**b), b["attention_mask"]))


@pytest.fixture(scope="module")
def discarded(tmp_path_factory, tiny_bert, data_dir):
    tmp = tmp_path_factory.mktemp("discarded")
    store = tmp / "store.sqlite"
    argv = ["fit", *config_args(str(ROOT / "recipes" / "peft" / "vera.yaml")), "--model.init_args.backbone", tiny_bert,
            "--data.data_dir", data_dir, "--data.train_limit", "32", "--data.max_length", "48",
            "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--run.out_dir", str(tmp / "runs"), "--run.store", str(store)]
    assert main(argv) == 0
    (rec,) = Store(store).records()
    return tmp, rec


def test_export_refuses_a_run_without_its_checkpoint(discarded, capsys):
    tmp, rec = discarded
    assert main(["export", rec["run_dir"], "--out", str(tmp / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "kept no checkpoint" in err and "--run.keep_checkpoints true" in err
    assert not (tmp / "x").exists()


def test_export_refuses_other_weights_than_the_tested_ones(tmp_path, tiny_bert, data_dir, capsys):
    rec = _fit(tmp_path, tiny_bert, data_dir, "peft/vera.yaml")
    ckpt = Path(rec["extra"]["best_checkpoint"])
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["state_dict"]["head.net.4.bias"] += 1.0
    torch.save(state, ckpt)
    assert main(["export", rec["run_dir"], "--out", str(tmp_path / "x")]) == 2
    assert "is not the checkpoint run" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_refuses_an_unknown_run_and_an_existing_folder(discarded, tmp_path, capsys):
    tmp, rec = discarded
    assert main(["export", "0123456789abcdef", "--out", str(tmp_path / "x"),
                 "--store", str(tmp / "store.sqlite")]) == 2
    assert "neither a run folder nor a run key" in capsys.readouterr().err
    (tmp_path / "y").mkdir()
    assert main(["export", rec["run_key"], "--out", str(tmp_path / "y"), "--store", str(tmp / "store.sqlite")]) == 2
    assert "exists; give a new folder" in capsys.readouterr().err


def _refused(tmp: Path, rec: dict, capsys) -> str:
    out = tmp / "exported"
    capsys.readouterr()  # what fit printed
    assert main(["export", rec["run_key"], "--out", str(out), "--store", str(tmp / "store.sqlite")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert not out.exists() and list(tmp.glob(".exported.tmp-*")) == []
    return err


@pytest.mark.parametrize("recipe, extra", [("methods/adapter.yaml", ()), ("methods/prefix.yaml", ())])
def test_export_refuses_adapterhub_layers_before_reading_a_checkpoint(recipe, extra, tmp_path, tiny_bert, data_dir,
                                                                      capsys):
    """No PEFT format holds AdapterHub layers: one line naming the method and what export writes, nothing on disk,
    and no 'keep your checkpoints' detour first (the run below kept none)."""
    store = tmp_path / "store.sqlite"
    argv = ["fit", *config_args(str(ROOT / "recipes" / recipe)), "--model.init_args.backbone", tiny_bert,
            "--data.data_dir", data_dir, "--data.train_limit", "32", "--data.max_length", "48",
            "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--run.out_dir", str(tmp_path / "runs"), "--run.store", str(store), *extra]
    assert main(argv) == 0
    (rec,) = Store(store).records()
    err = _refused(tmp_path, rec, capsys)
    method = Path(recipe).stem
    assert f"method {method!r} adds AdapterHub layers" in err and "no PEFT format" in err
    assert "as a PEFT adapter (lora and the PEFT presets" in err and "as a backbone folder (finetune" in err
    assert "kept no checkpoint" not in err


@pytest.mark.parametrize("recipe, extra, why", [
    # a trained pooler lives in the base model, not in the adapter
    ("peft/peft_lora.yaml", ("--model.init_args.peft.r", "2", "--model.init_args.head", "pooler_linear",
                             "--model.init_args.train_pooler", "true"), "differ from the pretrained"),
    # prompt tuning with the pooler head: PEFT's own forward puts a virtual token where the pooler reads [CLS];
    # caught by export's own check that the written files give the run's features
    ("peft/peft_prompt.yaml", ("--model.init_args.peft.num_virtual_tokens", "3", "--model.init_args.head",
                               "pooler_linear"), "do not give this run's features"),
])
def test_export_refuses_an_adapter_whose_base_is_not_the_pretrained_model(recipe, extra, why, tmp_path, tiny_bert,
                                                                          data_dir, capsys):
    rec = _fit(tmp_path, tiny_bert, data_dir, recipe, "--model.init_args.lr", "1e-2", *extra)
    err = _refused(tmp_path, rec, capsys)
    assert f"method {rec['method']!r}: " in err and why in err and "as a PEFT adapter" in err


@pytest.mark.parametrize("method", ["cross_attention"])
def test_export_refuses_a_pooling_head_json_cannot_describe(method, tmp_path, capsys):
    rec = {"run_key": "0123456789abcdef", "status": "complete", "method": method,
           "model_class": "pl_petune.methods.CrossAttentionTuning", "extra": {}}
    run = tmp_path / "run"
    run.mkdir()
    (run / "record.json").write_text(json.dumps(rec))
    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "method 'cross_attention' reads the T5 decoder" in err
    assert not (tmp_path / "exported").exists()


from tests.methods.test_decoders import PROJECTIONS, decoders  # noqa: E402,F401  (the tiny decoder folders)


@pytest.mark.parametrize("family", ["qwen2", pytest.param("llama", marks=pytest.mark.slow)])
def test_a_decoder_lora_run_exports_and_loads_with_peft_to_the_same_logits(family, decoders, data_dir, tmp_path,
                                                                           capsys):
    """A causal LM: someone else's code loads the adapter over the plain AutoModel with PeftModel.from_pretrained,
    feeds position ids as head.json says, pools the last kept token of *left-padded* rows, and gets the logits."""
    from peft import PeftModel
    from transformers import AutoModel

    backbone = decoders[family]
    store = tmp_path / "store.sqlite"
    argv = ["fit", *config_args(str(ROOT / "recipes" / "decoders" / "qwen2_lora.yaml")), "--model.init_args.backbone",
            backbone, "--model.init_args.peft.r", "2", "--model.init_args.lr", "1e-2",
            "--model.init_args.peft.target_modules", json.dumps(PROJECTIONS[family]),
            "--data.data_dir", data_dir, "--data.train_limit", "32", "--data.max_length", "48", "--data.batch_size",
            "8", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--run.keep_checkpoints",
            "true", "--run.out_dir", str(tmp_path / "runs"), "--run.store", str(store)]
    assert main(argv) == 0
    (rec,) = Store(store).records()
    out = tmp_path / "exported"
    assert main(["export", rec["run_key"], "--out", str(out), "--store", str(store)]) == 0
    desc = json.loads((out / "head.json").read_text())
    assert desc["export"] == "peft_adapter" and desc["pooling"] == "last_kept_token"
    assert desc["position_ids"].startswith("cumsum(attention_mask) - 1")

    g = torch.Generator().manual_seed(3)
    rows = [torch.randint(1000, 5000, (n,), generator=g) for n in (9, 5, 7)]
    ids = torch.full((3, 9), 102)
    mask = torch.zeros((3, 9), dtype=torch.long)
    for i, r in enumerate(rows):  # left padding, pad = EOS
        ids[i, 9 - len(r):], mask[i, 9 - len(r):] = r, 1
    theirs_model = PeftModel.from_pretrained(AutoModel.from_pretrained(backbone), str(out)).eval()
    with torch.no_grad():
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = theirs_model(input_ids=ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
        theirs = _plain_head(out)(hidden[:, -1])  # left padding: every row's last kept token is the last column
        from pl_petune.export import load_module

        ours = load_module(rec)(ids, mask)
        fresh = AutoModel.from_pretrained(backbone).eval()(input_ids=ids, attention_mask=mask,
                                                           position_ids=position_ids).last_hidden_state
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=0)
    assert not torch.allclose(_plain_head(out)(fresh[:, -1]), ours, atol=1e-4)  # the adapter carries the training
