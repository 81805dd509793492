"""``petune export RUN --out DIR``: a trained run in formats other code loads without pl_petune.

What is written (into a fresh folder, atomically: a temp folder beside ``DIR`` renamed at the end):

- a PEFT tuner (every :class:`~pl_petune.methods.Peft` preset, and the built-in ``lora``): the adapter in PEFT's
  own format, ``adapter_config.json`` + ``adapter_model.safetensors`` (``PeftModel.save_pretrained``), so
  ``PeftModel.from_pretrained(AutoModel.from_pretrained(base), DIR)`` rebuilds the tuned backbone;
- any method that only changes the backbone's own weights (full finetuning, BitFit, LayerNorm, ..., and EH-FT
  runs, whose PET layers are gone after the stage switch): the whole backbone as a Hugging Face model folder
  under ``backbone/`` (``save_pretrained``);
- always the head: ``head.safetensors`` (its weights) and ``head.json``: its layers in order, the pooling (which
  token's last hidden state it reads, or the pooler's output, and the position ids of a causal LM), the task's
  labels and the loss form, and the run's key and checkpoint hash.

A PiSSA or OLoRA adapter (whose init moved part of W into the adapter) is written as PEFT converts it: a plain
LoRA of rank 2r over the *pretrained* W. Before the folder appears, export loads what it wrote as another
project would and checks it gives the run's features on a probe batch.

Refused in one line (exit 2, nothing written): AdapterHub layers (adapter, prefix, prompt, ia3), which have no
PEFT format; cross_attention (a T5 decoder pooling head.json cannot describe); a PEFT adapter whose base
weights were trained too (EH-FT reserve, train_pooler), which ``PeftModel.from_pretrained`` over the
pretrained model would silently get wrong; any export the check above finds wrong.

The weights are those the run's test pass scored: the record's best checkpoint, whose SHA-256 must match the
record (a run keeps it with ``--run.keep_checkpoints true``).

Examples:
    petune fit --config recipes/peft/dora.yaml --run.keep_checkpoints true
    petune export 3f2a9c0d1e4b5a6f --out exported/dora-cb
    petune export runs/cb/dora/3f2a9c0d1e4b5a6f --out exported/dora-cb
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pl_petune.cli import UsageError

HEAD_FORMAT = 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="petune export", description=__doc__.split("\n")[0])
    p.add_argument("run", help="a run folder (with record.json) or a run key in the store")
    p.add_argument("--out", required=True, help="folder to create (must not exist)")
    p.add_argument("--store", default=None, help="results store for a run key (default $PETUNE_STORE or "
                                                 "runs/results.sqlite)")
    return p


def find_record(run: str, store: str | None = None) -> dict[str, Any]:
    """The complete record of ``run``: a run folder's ``record.json``, or the store's record of a run key.

    Raises:
        UsageError: no such folder or key, or the run is not complete.
    """
    from pl_petune.store import Store, default_store_path

    path = Path(run)
    if path.is_dir():
        rec_file = path / "record.json"
        if not rec_file.is_file():
            raise UsageError(f"{run!r} is a folder without record.json; give a run folder or a run key")
        record = json.loads(rec_file.read_text())
    else:
        store_path = Path(store or default_store_path())
        record = Store(store_path).get(run) if store_path.is_file() else None
        if record is None:
            raise UsageError(f"{run!r} is neither a run folder nor a run key in {store_path}")
    if record.get("status") != "complete":
        raise UsageError(f"run {record.get('run_key')} is {record.get('status')!r}, not complete: nothing was tested "
                         "to export")
    return record


def _checkpoint(record: dict[str, Any]) -> str:
    from pl_petune.callbacks._common import file_sha256

    ckpt = (record.get("extra") or {}).get("best_checkpoint")
    if not ckpt or not Path(ckpt).is_file():
        raise UsageError(f"run {record['run_key']} kept no checkpoint ({ckpt or 'none recorded'}); train it with "
                         "--run.keep_checkpoints true to export it")
    if file_sha256(ckpt) != record.get("best_checkpoint_sha256"):
        raise UsageError(f"{ckpt} is not the checkpoint run {record['run_key']} tested (its SHA-256 differs from "
                         "the record's); refusing to export other weights")
    return ckpt


# What export can write, for the refusals (one line each).
EXPORTS = ("it exports PEFT tuners as a PEFT adapter (lora and the PEFT presets, petune params --all) and methods "
           "that train only the backbone's own weights as a backbone folder (finetune, bitfit, layernorm, ffn, mha, "
           "topk, random, frozen, linear_probe, Child-Tuning, Mixout, LP-FT and EH-FT runs)")


def _method_class(record: dict[str, Any]) -> type:
    import importlib

    from pl_petune.methods import PetuneModule

    module_name, _, cls_name = str(record.get("model_class", "")).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError, ValueError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, PetuneModule)):
        raise UsageError(f"{record.get('model_class')!r} of run {record['run_key']} is not a pl_petune method")
    return cls


def _adapterhub(cls: type) -> bool:
    from pl_petune.methods import LoRA, Peft, PetLayerMethod  # type: ignore[attr-defined]

    return issubclass(cls, PetLayerMethod) and not issubclass(cls, (Peft, LoRA))


def refuse_early(record: dict[str, Any]) -> None:
    """Refuse, from the record alone (before any checkpoint is read), a run export cannot write faithfully.

    Raises:
        UsageError: an AdapterHub method (adapter, prefix, prompt, ia3) whose tested weights still hold its
            layers (no EH-FT stage switch dropped them), or an encoder-decoder method (cross_attention), whose
            head reads a decoder state ``head.json`` cannot describe.
    """
    cls = _method_class(record)
    method = record.get("method") or cls.__name__
    hws = (record.get("extra") or {}).get("head_warm_start")
    if _adapterhub(cls) and not (hws and not hws.get("reserve")):
        raise UsageError(f"method {method!r} adds AdapterHub layers ({cls.__name__}), which have no PEFT format; "
                         f"{EXPORTS}")
    if getattr(cls, "requires_encoder_decoder", False):
        raise UsageError(f"method {method!r} reads the T5 decoder's last state over the input shifted right, a "
                         f"pooling head.json cannot describe; {EXPORTS}")


def load_module(record: dict[str, Any]):
    """The run's method module with its tested weights (the record's best checkpoint, hash-checked).

    A checkpoint taken after an EH-FT stage switch holds no PET layers: the module drops its own before the
    weights are loaded (strictly), as ``HeadWarmStart`` does on a resume.
    """
    import torch

    cls = _method_class(record)
    ckpt = torch.load(_checkpoint(record), map_location="cpu", weights_only=True)
    hparams = ckpt.get("hyper_parameters") or {}
    model = cls(**{k: v for k, v in hparams.items() if not k.startswith("_")})  # not LightningCLI's _instantiator
    state = ckpt["state_dict"]
    pet = set(getattr(model, "pet_parameter_names", list)())
    if pet and not pet & set(state):
        model.drop_pet_layers()
    model.on_load_checkpoint(ckpt)  # as Lightning's loader: the module's own state (AdaLoRA's rank pattern, ...)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _base_state(backbone) -> dict[str, Any]:
    """The weights under the PEFT layers (``base_layer`` folded back into the plain names), without PEFT's own."""
    import re

    from pl_petune.methods.peft_config import ADDED

    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    return {n.replace(".base_layer.", "."): t for n, t in base.state_dict().items()
            if not re.search(ADDED, "." + n) and ".lora_" not in n}


def _base_differs(model, reference: dict[str, Any]) -> list[str]:
    """Names of backbone weights under the PEFT layers that differ from ``reference`` (the pretrained backbone's,
    or, for an init that rewrites W, the freshly initialised module's): a PEFT adapter is loaded over the
    pretrained model, so training them (EH-FT reserve, ``train_pooler``) would be lost."""
    import torch

    ours = _base_state(model.backbone)
    return sorted(n for n, t in reference.items() if n in ours and not torch.equal(ours[n], t))


def _initial(record: dict[str, Any], model):
    """For an init that rewrites W (PiSSA, OLoRA): the module as initialised (the same init_seed gives the same
    factorisation), whose adapter PEFT subtracts to write a plain LoRA over the pretrained W; else ``None``."""
    if not getattr(model, "_rewrote_pretrained", False):
        return None
    return type(model)(**{k: v for k, v in model.hparams.items() if not k.startswith("_")}).eval()


def _refuse_loaded(model, record: dict[str, Any], initial) -> None:
    """Refuse a loaded module whose tested function the chosen export would not reproduce."""
    from pl_petune.methods import LoRA, Peft  # type: ignore[attr-defined]
    from pl_petune.methods.base import load_backbone

    method = record.get("method") or model.method_name
    if not getattr(model, "pet_parameter_names", list)():
        return  # no added layers (or dropped at an EH-FT switch): the whole backbone is written
    if not isinstance(model, (Peft, LoRA)):
        raise UsageError(f"method {method!r} kept its AdapterHub layers into stage 2 (EH-FT reserve), which have no "
                         f"PEFT format; {EXPORTS}")
    reference = _base_state(initial.backbone) if initial is not None else \
        load_backbone(model.hparams.backbone).state_dict()
    changed = _base_differs(model, reference)
    if changed:
        raise UsageError(f"method {method!r}: {len(changed)} backbone tensors (e.g. {changed[0]}) differ from the "
                         f"pretrained {model.hparams.backbone!r}, so a PEFT adapter over it would not give this run's "
                         "logits: the run also trained backbone weights under the adapter (EH-FT reserve, or "
                         f"train_pooler); {EXPORTS}")


def _verify(folder: Path, model, desc: dict[str, Any]) -> None:
    """Load what was written as another project would (``PeftModel.from_pretrained`` over the pretrained model, or
    the backbone folder) and check it gives the run's features on a probe batch (one row right-padded).

    Raises:
        UsageError: it does not (nothing is written then).
    """
    import torch
    from transformers import AutoModel

    from pl_petune.decoders import pool_features
    from pl_petune.methods.base import load_backbone

    config = model.backbone.config
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, min(int(getattr(config, "vocab_size", 1000)), 5000), (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    if desc["export"] == "peft_adapter":
        from peft import PeftModel

        theirs_model = PeftModel.from_pretrained(load_backbone(model.hparams.backbone), str(folder))
    else:
        theirs_model = AutoModel.from_pretrained(str(folder / "backbone"))
    with torch.no_grad():
        out = theirs_model.eval()(input_ids=ids, attention_mask=mask)
        if desc["pooling"] == "pooler_output":
            theirs = out.pooler_output
        else:
            hidden = out.last_hidden_state
            theirs = pool_features(config, hidden[:, hidden.shape[1] - ids.shape[1]:], mask)  # past virtual tokens
        ours = model.encode(ids, mask)
    if theirs.shape != ours.shape or not torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4):
        gap = float((theirs - ours).abs().max()) if theirs.shape == ours.shape else float("nan")
        raise UsageError(f"method {desc['method']!r}: the exported files loaded as PEFT/transformers load them do not "
                         f"give this run's features (max difference {gap:.2g} on a probe batch), so nothing was "
                         f"written; {EXPORTS}")


def head_description(model) -> dict[str, Any]:
    """``head.json``: how to rebuild and feed the head with plain PyTorch."""
    from torch import nn

    from pl_petune.decoders import is_causal_lm

    layers = []
    for i, layer in enumerate(model.head.net):
        if isinstance(layer, nn.Linear):
            layers.append({"type": "linear", "in": layer.in_features, "out": layer.out_features,
                           "weight": f"net.{i}.weight", "bias": f"net.{i}.bias"})
        elif isinstance(layer, nn.Dropout):
            layers.append({"type": "dropout", "p": layer.p})
        else:
            layers.append({"type": type(layer).__name__.lower()})  # tanh, relu
    causal = is_causal_lm(model.backbone.config)
    spec = model.spec
    notes = []
    prompt = bool(getattr(model, "_prompt_learning", False))
    if prompt:
        notes.append("prompt learning: the last_hidden_state starts with the virtual tokens; skip them before pooling "
                     "(prefix tuning adds none)")
        if getattr(model.backbone.config, "type_vocab_size", 0) > 1:
            notes.append("pl_petune feeds token_type_ids (virtual tokens in segment 0); PEFT's own prompt-learning "
                         "forward drops them, so for sentence pairs feed inputs_embeds and token_type_ids yourself")
    if causal:
        notes.append("pass position_ids = cumsum(attention_mask) - 1 (clamped at 0) for the same features under "
                     "left padding")
    pooler = model.hparams.get("head") == "pooler_linear"
    return {
        "format": HEAD_FORMAT,
        "layers": layers,
        "pooling": "pooler_output" if pooler else "last_kept_token" if causal else "first_kept_token",
        "position_ids": "cumsum(attention_mask) - 1, clamped at 0" if causal else "model default",
        "reads": ("the backbone's pooler_output (its pretrained pooler on the first token)" if pooler else
                  "the backbone's last_hidden_state at the pooled token (attention_mask decides which)"),
        "task": spec.name, "kind": spec.kind, "labels": list(spec.labels),
        "output": ("one logit, BCE-with-logits, positive above 0" if model.one_logit else
                   "regression value" if spec.kind == "regression" else
                   "one score per choice, softmax over choices" if spec.kind == "multiple_choice" else
                   "one logit per label, softmax"),
        "method": model.method_name,
        "notes": notes,
    }


def export(record: dict[str, Any], out: str | os.PathLike) -> Path:
    """Write the run's trained parts into the new folder ``out`` (see the module doc); returns it.

    Raises:
        UsageError: ``out`` exists, the run kept no (or another) checkpoint, or the export would not reproduce the
            run's function (:func:`refuse_early`; a PEFT adapter whose base weights are not the pretrained ones).
    """
    from safetensors.torch import save_file

    from pl_petune.methods import LoRA, Peft  # type: ignore[attr-defined]
    from pl_petune.methods.peft_config import ADAPTER

    out = Path(out)
    if out.exists():
        raise UsageError(f"--out {str(out)!r} exists; give a new folder")
    refuse_early(record)
    model = load_module(record)
    initial = _initial(record, model)
    _refuse_loaded(model, record, initial)
    adapter = bool(model.pet_parameter_names()) if isinstance(model, (Peft, LoRA)) else False
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir(parents=True)
    try:
        if adapter and isinstance(model, Peft) and initial is not None:
            # PEFT's own conversion: ΔW = trained B·A − initial B₀·A₀ as a plain LoRA of rank 2r over the pretrained W
            import tempfile

            init_dir = Path(tempfile.mkdtemp(prefix="petune_init_", dir=tmp.parent))  # PEFT: no "." in its name
            try:
                initial.backbone.save_pretrained(str(init_dir), selected_adapters=[ADAPTER])
                model.backbone.save_pretrained(str(tmp), selected_adapters=[ADAPTER],
                                               path_initial_model_for_weight_conversion=str(init_dir))
            finally:
                shutil.rmtree(init_dir, ignore_errors=True)
            kind = "peft_adapter"
        elif adapter and isinstance(model, Peft):
            model.export(str(tmp))
            kind = "peft_adapter"
        elif adapter:
            _lora_as_peft(model).save_pretrained(str(tmp))
            kind = "peft_adapter"
        else:
            model.backbone.save_pretrained(str(tmp / "backbone"))
            kind = "backbone"
        save_file({k: v.detach().contiguous() for k, v in model.head.state_dict().items()},
                  str(tmp / "head.safetensors"))
        desc = {**head_description(model), "export": kind, "base_model": model.hparams.backbone,
                "run_key": record["run_key"], "checkpoint_sha256": record["best_checkpoint_sha256"]}
        (tmp / "head.json").write_text(json.dumps(desc, indent=2, sort_keys=True) + "\n")
        _verify(tmp, model, desc)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _lora_as_peft(model):
    """The built-in LoRA's trained layers as a ``PeftModel`` over a fresh copy of the pretrained backbone."""
    import torch
    from peft import LoraConfig, get_peft_model

    from pl_petune.methods.base import load_backbone
    from pl_petune.methods.pet import LORA_TARGETS

    hp = model.hparams
    pattern = r".*(?:" + "|".join(LORA_TARGETS[t] for t in hp.targets) + r")$"
    config = LoraConfig(r=hp.r, lora_alpha=hp.alpha, lora_dropout=hp.dropout, target_modules=pattern,
                        bias="none", task_type="FEATURE_EXTRACTION")
    peft_model = get_peft_model(load_backbone(hp.backbone, hp.hidden_dropout), config)
    ours = {k[len("backbone."):]: v for k, v in model.state_dict().items() if model._is_added(k)}
    target = peft_model.base_model.model
    with torch.no_grad():
        missing = [k for k in ours if k not in dict(target.named_parameters())]
        if missing:
            raise UsageError(f"LoRA export: {missing[:2]} have no place in the PEFT model")
        for name, p in target.named_parameters():
            if name in ours:
                p.copy_(ours[name])
    return peft_model


def main(argv: list[str]) -> int:
    """``petune export RUN --out DIR``."""
    args = _parser().parse_args(argv)
    record = find_record(args.run, args.store)
    out = export(record, args.out)
    print(f"petune export: run {record['run_key']} ({record['method']} on {record['task']}) -> {out}")
    return 0
