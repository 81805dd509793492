"""The PEFT bridge: any PEFT tuner as a method, with its numbers, refusals and training hooks checked.

The shared matrix (test_matrix.py) holds one row per tuner (exact trainable set, a step changes exactly those,
checkpoint round trip, drop for EH-FT). Here: the bridge's LoRA is the built-in LoRA number for number; bad
configs are refused in one line before training; prompt learning keeps BERT's segment ids; AdaLoRA's rank
allocation runs inside a Lightning fit; a preset trains through ``petune fit`` to a complete record under its
own name.
"""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
from pl_petune.packaged import config_args
import pytest
import torch

from pl_petune.cli import main
from pl_petune.errors import ConfigError
from pl_petune.methods import METHODS
from pl_petune.methods.peft_config import TUNERS, peft_spec
from pl_petune.methods.peft_presets import NOT_APPLICABLE
from pl_petune.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _batch(seed: int = 0, segment_b: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (4, 10), generator=g)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    types = torch.zeros_like(ids)
    if segment_b:
        types[:, 5:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": torch.tensor([0, 1, 2, 1])}


def _train(model, steps: int = 3) -> None:
    model.train()
    opt = torch.optim.AdamW(model.param_groups(), lr=1e-2)
    for i in range(steps):
        b = _batch(i, segment_b=True)
        loss = model.loss(model(b["input_ids"], b["attention_mask"], b["token_type_ids"]), b["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_bridge_lora_is_the_builtin_lora_number_for_number(tiny_bert):
    """Same init_seed, same targets (query, value), r, alpha, dropout: the same init and the same training."""
    builtin = METHODS["lora"](task="cb", backbone=tiny_bert, r=4, alpha=8.0, dropout=0.1, init_seed=3)
    bridge = METHODS["peft_lora"](task="cb", backbone=tiny_bert, init_seed=3,
                                  peft={"r": 4, "lora_alpha": 8, "lora_dropout": 0.1,
                                        "target_modules": ["query", "value"]})
    assert builtin.parameter_report() == bridge.parameter_report()
    for model in (builtin, bridge):
        torch.manual_seed(0)  # the dropout draws
        _train(model)
    b = _batch(9, segment_b=True)
    builtin.eval()
    bridge.eval()
    with torch.no_grad():
        x = builtin(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        y = bridge(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    assert torch.equal(x, y)


def test_every_preset_is_a_registered_method_with_its_own_name():
    for name, tuner in TUNERS.items():
        cls = METHODS[name]
        assert cls.method_name == name and cls.__name__ == tuner.class_name and cls.tuner.config == tuner.config
    assert METHODS["peft"].method_name == "peft"
    assert not set(NOT_APPLICABLE) & {peft_spec(METHODS[n].params_example.get("peft"), t)["peft_type"]
                                      for n, t in TUNERS.items()}


@pytest.mark.parametrize("method, peft, message", [
    ("dora", {"rr": 4}, r"unknown argument\(s\) \['rr'\] of peft.LoraConfig; allowed: .*lora_alpha"),
    ("dora", {"use_dora": False}, r"'dora': peft.use_dora=False would be another tuner; allowed: True"),
    ("peft_lora", {"use_dora": True}, r"'peft_lora': peft.use_dora=True would be another tuner"),
    ("pissa", {"init_lora_weights": "olora"}, r"init_lora_weights='olora' would be another tuner"),
    ("vera", {"peft_type": "LORA"}, r"method 'vera' is peft.VeraConfig; got peft.LoraConfig"),
    ("vera", {"task_type": "SEQ_CLS"}, r"task_type 'SEQ_CLS': the bridge sets FEATURE_EXTRACTION"),
    ("vera", {"inference_mode": True}, r"peft.inference_mode true would freeze the adapter"),
    ("peft", {"peft_type": "LORAX"}, r"unknown peft_type 'LORAX'; known: .*VERA"),
    ("peft", {"r": 8}, r"name the tuner"),
    ("peft", {"peft_type": "VERA", "r": 8}, r"is method 'vera': use class_path pl_petune.methods.VeRA"),
    ("peft", {"peft_type": "LORA", "use_dora": True}, r"is method 'dora': use class_path pl_petune.methods.DoRA"),
    ("peft", {"class_path": "peft.LoraConfig", "init_args": {"r": 4}, "lora_alphaa": 32},
     r"unknown argument\(s\) \['lora_alphaa'\] of peft.LoraConfig; allowed: .*lora_alpha"),
    # a stated value equal to PEFT's default still counts: the DoRA preset must not quietly train DoRA
    ("dora", {"class_path": "peft.LoraConfig", "init_args": {"use_dora": False}},
     r"'dora': peft.use_dora=False would be another tuner"),
    ("rslora", {"class_path": "peft.LoraConfig", "init_args": {"r": 4}, "use_rslora": False},
     r"'rslora': peft.use_rslora=False would be another tuner"),
    ("peft", {"class_path": "peft.DoRAConfig"},
     r"peft.DoRAConfig is not a PEFT config class in peft .*use_dora.*; known: .*LoraConfig.*VeraConfig"),
    ("adalora", {}, r"peft.AdaLoraConfig: .*total_step"),
    ("oft", {"r": 4, "oft_block_size": 4}, r"peft.OFTConfig: "),
])
def test_bad_configs_are_refused_in_one_line_before_a_backbone_loads(method, peft, message):
    with pytest.raises(ConfigError, match=message) as err:
        METHODS[method](task="cb", backbone="/nonexistent/backbone", peft=peft)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("peft", [{"class_path": "peft.C3AConfig", "init_args": {"block_size": 256}},
                                  {"block_size": 256}, {"peft_type": "C3A", "block_size": 256}])
def test_a_stated_value_beats_the_presets_default_even_at_pefts_default(peft):
    """C3A's preset default is block_size 16; PEFT's is 256. Stating 256 must train 256, in every spelling."""
    assert peft_spec(peft, TUNERS["c3a"])["block_size"] == 256
    assert peft_spec({}, TUNERS["c3a"])["block_size"] == 16


def test_a_config_object_states_every_field_so_a_preset_checks_them_all():
    import peft

    with pytest.raises(ConfigError, match=r"'dora': peft.use_dora=False would be another tuner"):
        METHODS["dora"](task="cb", backbone="/nonexistent/backbone", peft=peft.LoraConfig(r=2))
    assert peft_spec(peft.LoraConfig(r=2, use_dora=True), TUNERS["dora"])["use_dora"] is True


def test_targets_that_match_nothing_are_refused(tiny_bert):
    with pytest.raises(ConfigError, match=r"'vera' \(peft.VeraConfig\) with target_modules \['q_proj'\] on backbone .*\(bert\)"):
        METHODS["vera"](task="cb", backbone=tiny_bert, peft={"target_modules": ["q_proj"]})


def test_the_generic_bridge_takes_a_config_object_and_class_path(tiny_bert):
    import peft

    spec = peft_spec(peft.TrainableTokensConfig(token_indices=[101], target_modules=["word_embeddings"]))
    assert spec == {"peft_type": "TRAINABLE_TOKENS", "token_indices": [101], "target_modules": ["word_embeddings"]}
    same = peft_spec({"class_path": "peft.TrainableTokensConfig",
                      "init_args": {"token_indices": [101], "target_modules": ["word_embeddings"]}})
    assert same == spec
    model = METHODS["peft"](task="cb", backbone=tiny_bert, peft=spec)
    assert model.record_extra()["peft_config"] == spec


@pytest.mark.parametrize("method", ["peft_prompt", "p_tuning", "peft_prefix"])
def test_prompt_learning_keeps_the_segment_ids(method, tiny_bert):
    """PEFT's own prompt-learning forward drops token_type_ids (segment B would read as segment A); ours keeps
    them and otherwise computes exactly PEFT's forward."""
    from pl_petune.decoders import pool_features

    model = METHODS[method](task="cb", backbone=tiny_bert, peft={"num_virtual_tokens": 3}).eval()
    b = _batch(2, segment_b=True)
    with torch.no_grad():
        ours_a = model.encode(b["input_ids"], b["attention_mask"], torch.zeros_like(b["token_type_ids"]))
        ours_b = model.encode(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        theirs = model.backbone(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
    skip = 0 if method == "peft_prefix" else 3
    assert torch.allclose(ours_a, pool_features(model.backbone.config, theirs[:, skip:], b["attention_mask"]),
                          atol=1e-6)
    assert not torch.allclose(ours_a, ours_b, atol=1e-4)


def test_adalora_penalty_and_rank_allocation_run_in_a_lightning_fit(tiny_bert):
    model = METHODS["adalora"](task="cb", backbone=tiny_bert, lr=1e-2,
                               peft={"init_r": 4, "target_r": 2, "total_step": 8, "tinit": 1, "tfinal": 2,
                                     "deltaT": 1, "orth_reg_weight": 0.5})
    b = _batch(0)
    logits = model(b["input_ids"], b["attention_mask"])
    model.eval()
    plain = model.loss(logits, b["labels"])
    model.train()
    assert model.loss(logits, b["labels"]) > plain  # the orthogonality penalty, in training only
    cfg = model.backbone.peft_config["default"]
    assert cfg.rank_pattern is None

    data = [{k: v for k, v in _batch(i).items()} for i in range(8)]
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    L.Trainer(max_steps=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(model, loader)
    assert cfg.rank_pattern is not None  # the final budget was fixed at step total_step - tfinal
    kept = sum(sum(m) for m in cfg.rank_pattern.values())
    assert kept == 2 * len(cfg.rank_pattern)  # target_r per adapted layer, on average


def _fit(tmp_path: Path, tiny_bert: str, data_dir: str, *extra: str) -> Store:
    store = tmp_path / "store.sqlite"
    argv = ["fit", *config_args(str(ROOT / "recipes" / "peft" / "dora.yaml")),
            "--model.init_args.backbone", tiny_bert, "--data.data_dir", data_dir, "--data.train_limit", "48",
            "--data.max_length", "48", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
            "--run.out_dir", str(tmp_path / "runs"), "--run.store", str(store), *extra]
    assert main(argv) == 0
    return Store(store)


def test_a_preset_trains_through_petune_fit_to_a_record_under_its_name(tmp_path, tiny_bert, data_dir):
    (rec,) = _fit(tmp_path, tiny_bert, data_dir, "--model.init_args.peft.r", "2").records()
    assert rec["status"] == "complete" and rec["method"] == "dora"
    assert rec["model_class"] == "pl_petune.methods.DoRA"
    assert rec["extra"]["peft_config"]["use_dora"] is True and rec["extra"]["peft_config"]["r"] == 2
    model = METHODS["dora"](task="cb", backbone=tiny_bert, peft=rec["extra"]["peft_config"])
    assert rec["trainable_params"] == model.parameter_report()["trainable_params"]
    # 2 layers x (query, value) x (A: 2x32, B: 32x2, magnitude: 32) + the head (32x32+32 + 32x3+3)
    assert rec["trainable_params"] == 2 * 2 * (64 + 64 + 32) + (32 * 32 + 32 + 32 * 3 + 3)
    assert 0.0 <= rec["test_metrics"]["test/f1_macro"] <= 1.0


def test_cli_refuses_a_bad_peft_argument_with_one_line(tmp_path, tiny_bert, data_dir, capsys):
    argv = ["fit", *config_args(str(ROOT / "recipes" / "peft" / "dora.yaml")), "--model.init_args.backbone", tiny_bert,
            "--model.init_args.peft.use_dora", "false", "--data.data_dir", data_dir,
            "--run.out_dir", str(tmp_path / "runs"), "--run.store", str(tmp_path / "s.sqlite")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "use_dora=False would be another tuner" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "s.sqlite").exists()


def test_adalora_refuses_a_total_step_the_run_cannot_reach(tiny_bert):
    model = METHODS["adalora"](task="cb", backbone=tiny_bert, peft={"init_r": 4, "target_r": 2, "total_step": 50,
                                                                   "tinit": 1, "tfinal": 2})
    loader = torch.utils.data.DataLoader([_batch(i) for i in range(4)], batch_size=None)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with pytest.raises(ConfigError, match="total_step 50 exceeds this run's 8 optimizer steps.*total_step: 8"):
        trainer.fit(model, loader)


def test_adalora_resumed_mid_run_ends_where_the_uninterrupted_run_ends(tiny_bert, tmp_path):
    """The rank allocator's importance estimates travel in the checkpoint: stop after 3 of 8 steps, resume from
    last.ckpt, and the adapter weights and rank pattern equal an uninterrupted run's."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    args = dict(task="cb", backbone=tiny_bert, lr=1e-2, peft={"init_r": 8, "target_r": 1, "total_step": 8,
                                                             "tinit": 0, "tfinal": 1, "deltaT": 1})
    loader = torch.utils.data.DataLoader([_batch(i) for i in range(3)], batch_size=None)  # stop at an epoch end

    class StopAt(L.Callback):  # the kill: the run is configured for 8 steps and stops after 4
        def on_train_batch_end(self, trainer, *args) -> None:
            trainer.should_stop = trainer.global_step >= 3

    def trainer(root: Path, *extra: L.Callback) -> L.Trainer:
        return L.Trainer(max_steps=8, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=root, deterministic=True,
                         callbacks=[ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1), *extra])

    L.seed_everything(0)
    whole = METHODS["adalora"](**args)
    trainer(tmp_path / "a").fit(whole, loader)
    L.seed_everything(0)
    first = METHODS["adalora"](**args)
    trainer(tmp_path / "b", StopAt()).fit(first, loader)
    assert first.trainer.global_step == 3
    resumed = METHODS["adalora"](**args)
    trainer(tmp_path / "b").fit(resumed, loader, ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole.backbone.peft_config["default"].rank_pattern == resumed.backbone.peft_config["default"].rank_pattern


def test_the_class_path_form_through_petune_fit_saves_plain_hyperparameters(tmp_path, tiny_bert, data_dir):
    """``peft: {class_path: peft.<X>Config, init_args}`` from a recipe: the checkpoint holds plain data (loads
    with weights_only=True, so the record finds its best epoch), and the record names the tuner's config."""
    store = tmp_path / "store.sqlite"
    peft = '{class_path: peft.TrainableTokensConfig, init_args: {token_indices: [101, 102], ' \
           'target_modules: [word_embeddings]}}'
    argv = ["fit", "--config", str(ROOT / "recipes" / "quickstart.yaml"), "--model.class_path", "pl_petune.methods.Peft",
            "--model.init_args.backbone", tiny_bert, "--model.init_args.peft", peft, "--data.data_dir", data_dir, "--data.train_limit", "32",
            "--data.max_length", "48", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--run.out_dir", str(tmp_path / "runs"), "--run.store", str(store), "--run.keep_checkpoints", "true"]
    assert main(argv) == 0
    (rec,) = Store(store).records()
    assert rec["method"] == "peft" and rec["best_epoch"] == 0
    assert rec["extra"]["peft_config"] == {"peft_type": "TRAINABLE_TOKENS", "token_indices": [101, 102],
                                           "target_modules": ["word_embeddings"]}
    loaded = METHODS["peft"].load_from_checkpoint(rec["extra"]["best_checkpoint"], map_location="cpu",
                                                  weights_only=True)
    assert loaded.record_extra()["peft_config"] == rec["extra"]["peft_config"]


def test_every_peft_tuner_is_a_preset_not_applicable_with_a_reason_or_the_generic_matrix_case():
    """A PEFT release with a new tuner fails here until the tuner gets a preset (or a reason it does not apply)."""
    from peft import PeftType

    from tests.methods.test_matrix import CASES

    presets = {peft_spec(METHODS[n].params_example.get("peft"), t)["peft_type"] for n, t in TUNERS.items()}
    generic = {kw["peft"]["peft_type"] for m, kw, _ in CASES.values() if m == "peft"}
    assert generic == {"TRAINABLE_TOKENS"}
    assert {t.value for t in PeftType} == presets | set(NOT_APPLICABLE) | generic
    assert not presets & set(NOT_APPLICABLE) and all(NOT_APPLICABLE.values())


def test_a_new_preset_is_one_registered_class_and_every_part_sees_it(tiny_bert, capsys):
    """Adding a PEFT preset: the class (its registration and Tuner) is all the library needs; the catalogue, the
    generic bridge's refusal, parameter accounting and ``petune params`` follow from the registry."""
    from pl_petune.methods import Peft
    from pl_petune.methods.peft_config import ADDED, Tuner
    from pl_petune.methods.registry import register_method, unregister_method

    @register_method("trainable_tokens", added=ADDED)
    class TrainableTokens(Peft):
        """Trainable token embeddings (PEFT TrainableTokensConfig)."""
        tuner = Tuner("TrainableTokensConfig", defaults={"target_modules": ["word_embeddings"]})

    try:
        assert TUNERS["trainable_tokens"].class_name == "TrainableTokens"
        assert "peft.TrainableTokensConfig" in TrainableTokens.__doc__ and TrainableTokens.params_example == {}
        with pytest.raises(ConfigError, match=r"is method 'trainable_tokens': use class_path "
                                              r"pl_petune.methods.TrainableTokens"):
            METHODS["peft"](task="cb", backbone=tiny_bert, peft={"peft_type": "TRAINABLE_TOKENS",
                                                                 "token_indices": [101]})
        model = TrainableTokens(task="cb", backbone=tiny_bert, peft={"token_indices": [101, 102]})
        assert model.method_name == "trainable_tokens"
        assert {n for n in model.trainable_names() if not n.startswith("head.")} == {
            n for n, _ in model.named_parameters() if "trainable_tokens_delta" in n}
        assert model.parameter_report()["added_params"] == 2 * 32  # two tokens x 32 wide, one embedding matrix
        assert main(["params", "--method", "trainable_tokens", "--backbone", tiny_bert,
                     "--model.init_args.peft", "{token_indices: [101]}"]) == 0
        assert "trainable_tokens" in capsys.readouterr().out
    finally:
        unregister_method("trainable_tokens")
    assert "trainable_tokens" not in TUNERS


@pytest.mark.parametrize("method, peft", [("peft_lora", {"r": 2}), ("peft_prompt", {"num_virtual_tokens": 3}),
                                          ("peft_prefix", {"num_virtual_tokens": 3})])
def test_head_pooler_linear_reads_the_pooler_through_the_bridge(method, peft, tiny_bert):
    """``head: pooler_linear`` means the pretrained pooler's output (tanh(W h_[CLS] + b)), with a tuner as without:
    the bridge's features are the pooler applied to its [CLS] state, not the raw [CLS] state."""
    model = METHODS[method](task="cb", backbone=tiny_bert, head="pooler_linear", peft=peft).eval()
    b = _batch(4, segment_b=True)
    with torch.no_grad():
        pooled = model.encode(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        model.hparams["head"] = "linear"  # the same tuner's [CLS] state
        cls_state = model.encode(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        pooler = model.backbone.get_base_model().pooler
        expect = torch.tanh(pooler.dense(cls_state))
    assert torch.allclose(pooled, expect, atol=1e-6) and not torch.allclose(pooled, cls_state, atol=1e-3)
    frozen = METHODS["frozen"](task="cb", backbone=tiny_bert, head="pooler_linear").eval()
    if method == "peft_lora":  # LoRA starts as the backbone (B = 0): the very features of a plain pooler head
        with torch.no_grad():
            assert torch.allclose(pooled, frozen.encode(b["input_ids"], b["attention_mask"], b["token_type_ids"]),
                                  atol=1e-6)


def test_train_pooler_trains_the_pooler_under_a_peft_tuner(tiny_bert):
    """``train_pooler: true`` with ``head: pooler_linear``: the pretrained pooler trains with the tuner (it was
    silently left frozen: under PEFT its names are backbone.base_model.model.pooler.*)."""
    model = METHODS["peft_lora"](task="cb", backbone=tiny_bert, head="pooler_linear", train_pooler=True,
                                 peft={"r": 2})
    pooler = {n for n, _ in model.named_parameters() if ".pooler." in n}
    assert pooler and pooler <= set(model.trainable_names())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, 1)
    assert all(not torch.equal(model.get_parameter(n), before[n]) for n in pooler)
    frozen = METHODS["peft_lora"](task="cb", backbone=tiny_bert, head="pooler_linear", peft={"r": 2})
    assert not {n for n in frozen.trainable_names() if ".pooler." in n}


# ---- the same configs as a user gives them: on the command line, over a recipe that already has a peft dict ----
@pytest.mark.parametrize("recipe, overrides, message", [
    ("peft", ["{peft_type: LORAX}"], r"unknown peft_type 'LORAX'; known: .*VERA"),
    ("peft", ["{class_path: peft.DoRAConfig}"], r"peft.DoRAConfig is not a PEFT config class .*known: .*LoraConfig"),
    ("peft", ["{class_path: peft.LoraConfig, init_args: {r: 4, use_dora: true}}"],
     r"is method 'dora': use class_path pl_petune.methods.DoRA"),
    ("dora", ["{class_path: peft.LoraConfig, init_args: {use_dora: false}}"],
     r"'dora': peft.use_dora=False would be another tuner"),
    ("peft", ["{class_path: peft.TrainableTokensConfig, init_args: {token_indices: [0]}}",
              "--model.init_args.peft.init_args.tokn_indices", "[1]"],
     r"unknown argument\(s\) \['tokn_indices'\] of peft.TrainableTokensConfig"),
    ("vera", ["{r: 8}", "--model.init_args.peft.task_type", "SEQ_CLS"], r"task_type 'SEQ_CLS': the bridge sets"),
])
def test_bad_configs_on_the_command_line_get_the_same_one_line_refusal(recipe, overrides, message, tmp_path,
                                                                      tiny_bert, data_dir, capsys):
    argv = ["fit", *config_args(str(ROOT / "recipes" / "peft" / f"{recipe}.yaml")), "--model.init_args.backbone",
            tiny_bert, "--data.data_dir", data_dir, "--run.out_dir", str(tmp_path / "runs"),
            "--run.store", str(tmp_path / "store.sqlite"), "--model.init_args.peft", *overrides]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "store.sqlite").exists() and not (tmp_path / "runs").exists()


def test_a_class_path_config_over_a_recipe_dict_with_a_dotted_override(tmp_path, tiny_bert, data_dir):
    """The recipe's peft is a plain dict; the command line replaces it with the class_path form and then sets
    one of its arguments: the run trains exactly that config (the override wins over init_args)."""
    store = tmp_path / "store.sqlite"
    argv = ["fit", *config_args(str(ROOT / "recipes" / "peft" / "peft.yaml")), "--model.init_args.backbone", tiny_bert,
            "--model.init_args.peft", "{class_path: peft.TrainableTokensConfig, init_args: {token_indices: [5], "
            "target_modules: [word_embeddings]}}", "--model.init_args.peft.init_args.token_indices", "[101, 102]",
            "--data.data_dir", data_dir, "--data.train_limit", "32", "--data.max_length", "48",
            "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--run.out_dir", str(tmp_path / "runs"), "--run.store", str(store)]
    assert main(argv) == 0
    (rec,) = Store(store).records()
    assert rec["extra"]["peft_config"] == {"peft_type": "TRAINABLE_TOKENS", "token_indices": [101, 102],
                                           "target_modules": ["word_embeddings"]}
