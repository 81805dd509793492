"""The recipes and sweep files shipped inside the package, found the same way from a wheel or a checkout.

A wheel installs ``recipes/`` and ``sweeps/`` as ``pl_petune/recipes`` and ``pl_petune/sweeps`` (package data);
an editable install or a plain checkout keeps them at the repository's top level. Either way a user names a
packaged recipe by its path inside ``recipes/`` (``quickstart``, ``methods/lora``, ``papers/ehft/table1/...``),
with or without ``.yaml`` and with or without the leading ``recipes/``.

Most recipes are layers run with two ``--config``: a *base* (``base/minilm_cb``: backbone, data, trainer, early
stopping; its header starts ``# A base recipe``) and after it a *method file* (``methods/lora``: the model class,
the method's own arguments and lr, and whatever else differs; its header has a line ``# Base recipe: <base>``).
jsonargparse merges the two in order; a ``model.class_path`` in the second file keeps the first file's
``model.init_args`` that the new class accepts. A method file alone, or a base that nothing gives a method, is
refused in one line naming what is missing (:func:`check_layers`): either would run silently with the parser's
defaults in place of the missing half.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, Optional, Sequence

from pl_petune.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent


def _root(name: str) -> Path:
    """``pl_petune/<name>`` in a wheel, else ``<checkout>/<name>``."""
    inside = _PACKAGE / name
    if inside.is_dir():
        return inside
    return _PACKAGE.parent / name


def recipes_root() -> Path:
    """The folder that holds the packaged recipes."""
    return _root("recipes")


def sweeps_root() -> Path:
    """The folder that holds the packaged sweep files."""
    return _root("sweeps")


def packaged_names(root: Path | None = None) -> list[str]:
    """Every packaged recipe as the name ``--config`` accepts (``methods/lora``), sorted."""
    root = recipes_root() if root is None else root
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def packaged_recipe(name: str) -> Path | None:
    """The packaged file a recipe name refers to, or None when it names none."""
    text = name.strip().replace("\\", "/")
    for prefix in ("pl_petune/recipes/", "recipes/"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    if not text.endswith((".yaml", ".yml")):
        text += ".yaml"
    candidate = (recipes_root() / text).resolve()
    try:
        candidate.relative_to(recipes_root().resolve())
    except ValueError:  # a name may not climb out of the recipes folder
        return None
    return candidate if candidate.is_file() else None


def resolve_config(value: str) -> str:
    """``value`` itself when it is an existing file, else the packaged recipe it names.

    Raises:
        ConfigError: neither a file nor a packaged recipe; the message lists the closest packaged names.
    """
    if Path(value).is_file() or value.startswith(("-", "{")) or "\n" in value:
        return value
    found = packaged_recipe(value)
    if found is not None:
        return str(found)
    import difflib

    names = packaged_names()
    close = difflib.get_close_matches(value.removesuffix(".yaml"), names, n=5, cutoff=0.5) or names[:5]
    raise ConfigError(f"--config {value!r} does not exist and names no packaged recipe; closest packaged recipes: "
                      + ", ".join(close) + " (petune recipes list shows all)")


BASE_MARK = "# A base recipe"
_METHOD_MARK = re.compile(r"^# Base recipe: (\S+)")
Layer = Literal["base", "method", "whole"]


def _header(path: Path) -> list[str]:
    """The leading comment lines of a recipe file (empty when it cannot be read as text)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def recipe_layer(path: str | os.PathLike) -> tuple[Layer, Optional[str]]:
    """What a recipe file is: ``("base", None)``, ``("method", <its base recipe>)`` or ``("whole", None)``.

    Read from the header comment (``# A base recipe ...`` / ``# Base recipe: <base>``), so a copied and edited
    file keeps its kind; the marker never changes what runs, only what :func:`check_layers` accepts.
    """
    header = _header(Path(path))
    for line in header:
        found = _METHOD_MARK.match(line)
        if found:
            return "method", found.group(1)
    if header and header[0].startswith(BASE_MARK):
        return "base", None
    return "whole", None


def config_args(name: str) -> list[str]:
    """The ``--config`` arguments that run a recipe: its base first when it is a method file.

    ``config_args("methods/lora")`` is ``["--config", <base/minilm_cb.yaml>, "--config", <methods/lora.yaml>]``;
    a whole recipe or a base gives its one ``--config``. Names resolve as ``--config`` resolves them.
    """
    path = resolve_config(name)
    layer, base = recipe_layer(path)
    if layer == "method" and base is not None:
        return ["--config", resolve_config(base), "--config", path]
    return ["--config", path]


def _merge(under: dict, over: dict) -> dict:
    out = dict(under)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def recipe_data(name: str) -> dict:
    """A recipe's YAML as a mapping, a method file's laid over its base's (mappings merged key by key, as
    ``--config`` after ``--config`` merges them), for readers of the file that do not run the parser
    (``petune params --config``).

    Raises:
        ConfigError: the name resolves to no file (:func:`resolve_config`).
        OSError, UnicodeDecodeError, yaml.YAMLError: the file (or its base) cannot be read as YAML.
    """
    import yaml

    path = resolve_config(name)
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    layer, base = recipe_layer(path)
    if layer == "method" and base is not None:
        data = _merge(recipe_data(base), data)
    return data


def _config_values(argv: Sequence[str]) -> list[str]:
    out = []
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif token.startswith("--config="):
            out.append(token.split("=", 1)[1])
    return out


def _sets_method(value: str, argv: Sequence[str]) -> bool:
    """Whether a ``--config`` value (a whole recipe or an inline YAML string) names a model class."""
    import yaml

    path = Path(value)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8") if path.is_file() else value)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return True  # not ours to judge: the parser reports the file or the text in its own words
    model = data.get("model") if isinstance(data, dict) else None
    if isinstance(model, dict):
        return "class_path" in model
    return isinstance(model, str)  # a class name or a file of its own


def check_layers(argv: Sequence[str]) -> None:
    """Refuse a ``--config`` list that leaves out half of a two-layer recipe (base + method file).

    ``argv`` has its packaged names already resolved to files. A method file must come after another
    ``--config`` (its base, or any whole recipe); a base needs a model class from a later method file, another
    recipe, or ``--model.class_path`` / ``--model`` on the command line.

    Raises:
        ConfigError: one line naming the file and the missing layer, with the command that adds it.
    """
    values = _config_values(argv)
    layers = [(v, *recipe_layer(v)) if Path(v).is_file() else (v, "whole", None) for v in values]
    for i, (value, layer, base) in enumerate(layers):
        if layer == "method" and i == 0:
            raise ConfigError(f"--config {value!r} holds only what differs from its base recipe {base}; give the base "
                              f"first: --config {base} --config {value} (all bases: petune recipes list base)")
    bases = [v for v, layer, _ in layers if layer == "base"]
    if not bases:
        return
    named = any(layer == "method" or (layer == "whole" and _sets_method(v, argv)) for v, layer, _ in layers)
    flags = any(t == "--model" or t.startswith(("--model=", "--model.class_path")) for t in argv)
    if not (named or flags):
        raise ConfigError(f"--config {bases[0]!r} is a base recipe and names no method; add a method file after it, "
                          f"e.g. --config {bases[0]} --config methods/lora (all methods: petune recipes list methods)")


def resolve_config_args(argv: Sequence[str], strict: bool = True) -> list[str]:
    """``argv`` with every ``--config X`` / ``--config=X`` naming a packaged recipe replaced by its path.

    Args:
        strict: a ``--config`` that names neither a file nor a packaged recipe raises :class:`ConfigError`;
            with False it is left as it is (the sweep's parse check reports it in its own words).

    Raises:
        ConfigError: an unknown name (``strict``), or half of a two-layer recipe (:func:`check_layers`).
    """
    def one(value: str) -> str:
        if strict:
            return resolve_config(value)
        if Path(value).is_file() or "\n" in value or value.startswith(("-", "{")):
            return value
        found = packaged_recipe(value)
        return str(found) if found is not None else value

    out = list(argv)
    for i, token in enumerate(out):
        if token == "--config" and i + 1 < len(out):
            out[i + 1] = one(out[i + 1])
        elif token.startswith("--config="):
            out[i] = "--config=" + one(token.split("=", 1)[1])
    check_layers(out)
    return out


def resolve_recipe_path(value: str, base: str | os.PathLike | None = None) -> str:
    """A recipe path written in a sweep file: relative to ``base`` or the working directory when that file
    exists, else the packaged recipe of that name (so a sweep file runs from an installed package too)."""
    for candidate in ([Path(base) / value] if base is not None else []) + [Path(value)]:
        if candidate.is_file():
            return str(candidate)
    return resolve_config(value)


def packaged_dir(kind: str) -> Path | None:
    """The folder of the packaged ``recipes`` or ``sweeps``, or None when this install has none."""
    root = _root(kind)
    return root if root.is_dir() else None


def resolve_configs(argv: Sequence[str]) -> list[str]:
    """:func:`resolve_config_args` without refusing: unknown names are left for the caller to report."""
    return resolve_config_args(argv, strict=False)
