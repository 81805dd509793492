"""The recipes and sweep files that ship inside pl_petune, found from any working directory.

Sweep commands name recipes by their path in the repository (``--config recipes/quickstart.yaml``), which
``wandb agent`` runs in whatever folder it was started. :func:`resolve_configs` turns such a path, when no
file is there, into the packaged recipe of the same name, so an installed pl_petune (no checkout) runs the
same sweep files. A ``--config`` that names an existing file, or is YAML text, is left as it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

_SUFFIXES = (".yaml", ".yml")


def packaged_dir(kind: str) -> Optional[Path]:
    """The folder of the packaged ``recipes`` or ``sweeps`` (a wheel's ``pl_petune/<kind>``, an editable
    install's top-level ``<kind>``), or None."""
    import importlib.resources

    import pl_petune

    try:
        root = importlib.resources.files(f"pl_petune.{kind}")
        if root.is_dir():
            return Path(str(root))
    except (ModuleNotFoundError, TypeError):
        pass  # an editable install cannot import a nested namespace package; look beside the package
    here = Path(pl_petune.__file__).resolve().parent
    for candidate in (here / kind, here.parent / kind):
        if candidate.is_dir():
            return candidate
    return None


def packaged_recipe(name: str) -> Optional[Path]:
    """The packaged file for ``recipes/<path>`` or ``<path>`` (``.yaml`` may be left out), or None."""
    root = packaged_dir("recipes")
    if root is None or not name or "\n" in name or ":" in name.split("/")[0]:
        return None
    rel = name[len("recipes/"):] if name.startswith("recipes/") else name
    for candidate in (rel, rel + ".yaml"):
        path = (root / candidate).resolve()
        if path.is_file() and root.resolve() in path.parents:
            return path
    return None


def resolve_configs(argv: Sequence[str]) -> list[str]:
    """``argv`` with every ``--config`` recipe path that is not a file here replaced by the packaged one."""
    out = list(argv)
    for i, token in enumerate(out):
        if token == "--config" and i + 1 < len(out):
            j, value, prefix = i + 1, out[i + 1], ""
        elif token.startswith("--config="):
            j, value, prefix = i, token.split("=", 1)[1], "--config="
        else:
            continue
        if value.endswith(_SUFFIXES) and not os.path.exists(value):
            found = packaged_recipe(value)
            if found is not None:
                out[j] = prefix + str(found)
    return out


__all__ = ["packaged_dir", "packaged_recipe", "resolve_configs"]
