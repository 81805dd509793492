"""Recipe files as jsonargparse will read them: UTF-8 text whose mappings give each key once.

:func:`check_recipe_files` refuses a recipe that is not UTF-8 (jsonargparse would raise a bare
UnicodeDecodeError) or repeats a key; :func:`strict_yaml` makes jsonargparse's own YAML loader refuse a mapping
with a key given twice (PyYAML keeps the last one silently).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from pl_petune.errors import ConfigError

RECIPE_SUFFIXES = (".yaml", ".yml", ".json")
DUPLICATE = "is given twice"


def recipe_paths(argv: Iterable[str]) -> list[Path]:
    """The files an argv hands jsonargparse to read: ``--config X`` / ``--config=X`` and any option whose value
    is an existing ``.yaml``/``.yml``/``.json`` file (jsonargparse reads ``--model m.yaml`` as a file too)."""
    out: list[Path] = []
    for tok in argv:
        value = tok.split("=", 1)[1] if tok.startswith("--") and "=" in tok else tok
        if value.lower().endswith(RECIPE_SUFFIXES) and os.path.isfile(value):
            out.append(Path(value))
    return out


def check_recipe_files(argv: Iterable[str]) -> None:
    """Every recipe file of ``argv`` must be UTF-8 text (jsonargparse would raise a bare UnicodeDecodeError)
    whose mappings give each key once (the message names the file; YAML syntax errors are left to jsonargparse),
    and no half of a base + method recipe may come alone (:func:`pl_petune.packaged.check_layers`)."""
    import yaml

    from pl_petune.packaged import check_layers

    argv = list(argv)
    check_layers(argv)

    strict_yaml()
    from jsonargparse._loaders_dumpers import get_yaml_default_loader

    StrictSafeLoader = get_yaml_default_loader()
    assert issubclass(StrictSafeLoader, yaml.SafeLoader) or issubclass(StrictSafeLoader, yaml.CSafeLoader)
    for path in recipe_paths(argv):
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise ConfigError(f"recipe {str(path)!r} is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); "
                              "save it as UTF-8") from None
        try:
            yaml.load(text, Loader=StrictSafeLoader)
        except yaml.constructor.ConstructorError as err:
            if DUPLICATE in str(err.problem):
                raise ConfigError(f"recipe {str(path)!r}: {err.problem}") from None
        except yaml.YAMLError:
            pass


def strict_yaml() -> None:
    """Make jsonargparse's YAML loader refuse a mapping that gives one key twice (idempotent).

    PyYAML keeps the last value of a repeated key, so ``trainer: {max_epochs: 2}`` followed later by another
    ``trainer:`` block silently drops the first block. YAML 1.2 says keys are unique; this enforces it.
    """
    import yaml
    from jsonargparse._loaders_dumpers import get_yaml_default_loader

    loader = get_yaml_default_loader()
    if getattr(loader, "_petune_strict", False):
        return

    def construct_unique_map(self: Any, node: Any) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} {DUPLICATE} (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                    "YAML keys must be unique: keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return yaml.constructor.SafeConstructor.construct_yaml_map(self, node)

    loader.add_constructor("tag:yaml.org,2002:map", construct_unique_map)
    loader._petune_strict = True


__all__ = ["recipe_paths", "check_recipe_files", "strict_yaml", "RECIPE_SUFFIXES", "DUPLICATE"]
