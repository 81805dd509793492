"""The recipes and sweep files shipped inside the package, found the same way from a wheel or a checkout.

A wheel installs ``recipes/`` and ``sweeps/`` as ``pl_petune/recipes`` and ``pl_petune/sweeps`` (package data);
an editable install or a plain checkout keeps them at the repository's top level. Either way a user names a
packaged recipe by its path inside ``recipes/`` (``quickstart``, ``methods/lora``, ``papers/ehft/table1/...``),
with or without ``.yaml`` and with or without the leading ``recipes/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

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


def resolve_config_args(argv: Sequence[str], strict: bool = True) -> list[str]:
    """``argv`` with every ``--config X`` / ``--config=X`` naming a packaged recipe replaced by its path.

    Args:
        strict: a ``--config`` that names neither a file nor a packaged recipe raises :class:`ConfigError`;
            with False it is left as it is (the sweep's parse check reports it in its own words).
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
