"""Reading a sweep file: UTF-8 YAML as ``wandb sweep`` reads it, a repeated key refused, packaged files found.

``petune sweep smoke`` (or ``sweeps/smoke.yaml`` outside a checkout) is the sweep file shipped inside
pl_petune; the structure is then checked by :func:`pl_petune.sweep.spec.validate_sweep`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pl_petune.sweep.spec import SweepError, validate_sweep


def _yaml_loader() -> Any:
    """PyYAML's safe loader that refuses a key repeated in one mapping (PyYAML keeps the last silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                continue
            if key in seen:
                raise SweepError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice in one mapping "
                                 "(YAML would keep only the last)")
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read a sweep YAML file (PyYAML, as ``wandb sweep`` reads it) and check its structure.

    Raises:
        SweepError: a missing, non-UTF-8 or invalid YAML file, a repeated key, or a structure
            :func:`validate_sweep` refuses.
    """
    import yaml

    p = sweep_path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SweepError(f"{p}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                         "save the sweep file as UTF-8") from None
    try:
        loader = _yaml_loader()(text)  # a yaml.SafeLoader subclass that refuses repeated keys
        try:
            sweep = loader.get_single_data()
        finally:
            loader.dispose()
    except SweepError as err:
        raise SweepError(f"{p}: {err}") from None
    except yaml.YAMLError as err:
        raise SweepError(f"{p}: not valid YAML ({' '.join(str(err).split())})") from None
    validate_sweep(sweep, where=str(p))
    return sweep


def sweep_path(path: str | Path) -> Path:
    """``path`` when it is a file, else the packaged sweep file of that name (``sweeps/smoke.yaml``, ``smoke``).

    Raises:
        SweepError: neither exists.
    """
    p = Path(path)
    if not p.is_file():
        p = _packaged_sweep(str(path)) or p
    if not p.is_file():
        raise SweepError(f"sweep file {str(path)!r} not found (here or among the packaged sweeps/)")
    return p


def _packaged_sweep(name: str) -> Optional[Path]:
    """``sweeps/<name>`` of an installed pl_petune (``.yaml`` may be left out), or None."""
    from pl_petune.packaged import packaged_dir

    root = packaged_dir("sweeps")
    rel = name[len("sweeps/"):] if name.startswith("sweeps/") else name
    for candidate in ((root / rel, root / f"{rel}.yaml") if root is not None and rel else ()):
        if candidate.resolve().is_file() and root.resolve() in candidate.resolve().parents:  # type: ignore[union-attr]
            return candidate
    return None


__all__ = ["load_sweep", "sweep_path"]
