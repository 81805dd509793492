"""``petune recipes list|show|cp``: the recipes shipped with pl_petune, for users who installed it (no checkout).

``--config`` of ``petune fit`` accepts the same names. Most recipes are two layers, a base and a method file
(``petune fit --config base/minilm_cb --config methods/lora``); ``show`` and ``cp`` of a method file bring its
base along.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from pl_petune.errors import ConfigError
from pl_petune.packaged import packaged_names, recipe_layer, recipes_root, resolve_config
from pl_petune.records import atomic_write_bytes


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage dump
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="petune recipes", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    ls = sub.add_parser("list", help="the packaged recipe names")
    ls.add_argument("prefix", nargs="?", default="", help="only names starting with this (e.g. papers/ehft)")
    show = sub.add_parser("show", help="print recipes; a method file alone comes after its base")
    show.add_argument("names", nargs="+", metavar="name")
    show.add_argument("--composed", action="store_true",
                      help="print the one config petune fit runs from these files (jsonargparse's --print_config)")
    cp = sub.add_parser("cp", help="copy recipes (a method file with its base, or a folder) to edit them")
    cp.add_argument("names", nargs="+", metavar="name")
    cp.add_argument("dest")
    return p


def _with_bases(names: list[str]) -> list[Path]:
    """The files of ``names``, a lone method file preceded by its base recipe."""
    paths = [Path(resolve_config(n)) for n in names]
    layer, base = recipe_layer(paths[0])
    if len(paths) == 1 and layer == "method" and base is not None:
        paths.insert(0, Path(resolve_config(base)))
    return paths


def _show(names: list[str], composed: bool) -> int:
    paths = _with_bases(names)
    if composed:
        from pl_petune.cli import main as petune

        argv = ["fit"]
        for path in paths:
            argv += ["--config", str(path)]
        return petune(argv + ["--print_config"])
    for i, path in enumerate(paths):
        if len(paths) > 1:  # one YAML stream, one document per file, in the order --config reads them
            sys.stdout.write(("---" if i else "") + f"{'' if not i else chr(10)}# ==== {path.name}: --config {i + 1} "
                             f"of {len(paths)} ({path})\n")
        sys.stdout.write(path.read_text(encoding="utf-8"))
    return 0


def _copy(sources: list[tuple[Path, Path]]) -> None:
    """Copy every (source, target), refusing before writing anything when a target exists.

    A method file copied with its base names the copied base in its ``# Base recipe:`` line, so the copies
    run (and are refused alone) as a pair.
    """
    for _, target in sources:
        if target.exists():
            raise ConfigError(f"destination {str(target)!r} exists; remove it or give another name")
    moved = {source.resolve(): target for source, target in sources}
    for source, target in sources:
        data = source.read_bytes()
        layer, base = recipe_layer(source)
        if layer == "method" and base is not None and Path(resolve_config(base)).resolve() in moved:
            text = data.decode("utf-8")
            copied_base = moved[Path(resolve_config(base)).resolve()]
            data = text.replace(f"# Base recipe: {base}", f"# Base recipe: {copied_base}", 1).encode("utf-8")
        atomic_write_bytes(target, data)


def _cp(names: list[str], dest: Path) -> int:
    folder = recipes_root() / names[0].strip("/") if len(names) == 1 else None
    if folder is not None and folder.is_dir():  # a whole folder (e.g. papers/ehft/table1, methods)
        if dest.exists():
            raise ConfigError(f"destination {str(dest)!r} exists; give a new folder name")
        files = sorted(folder.rglob("*.yaml"))
        pairs = [(p, dest / p.relative_to(folder)) for p in files]
        bases = {Path(resolve_config(b)) for p in files for layer, b in [recipe_layer(p)] if layer == "method" and b}
        outside = sorted(b for b in bases if folder.resolve() not in b.resolve().parents)
        pairs += [(b, dest / b.name) for b in outside]
        if len({t for _, t in pairs}) != len(pairs):
            raise ConfigError(f"recipes of {names[0]!r} would overwrite each other in {str(dest)!r}")
        _copy(pairs)
        extra = f" and their base{'s' if len(outside) > 1 else ''} {', '.join(b.name for b in outside)}" if outside \
            else ""
        print(f"petune: copied {len(files)} recipes{extra} to {dest}")
        return 0
    paths = _with_bases(names)
    if len(paths) == 1 and not dest.is_dir():
        pairs = [(paths[0], dest)]
    elif not dest.is_dir() and dest.suffix in (".yaml", ".yml"):
        raise ConfigError(f"{', '.join(p.name for p in paths)} are {len(paths)} files (a method file comes with its "
                          f"base); give a folder, not the file {str(dest)!r}")
    else:
        pairs = [(p, dest / p.name) for p in paths]
    if len({t for _, t in pairs}) != len(pairs):
        raise ConfigError(f"two recipes named {pairs[0][1].name!r} would be copied to one file; copy them one by one")
    _copy(pairs)
    targets = [t for _, t in pairs]
    print(f"petune: copied {', '.join(p.name for p in paths)} to {dest}"
          + (f"; run them: petune fit {' '.join('--config ' + str(t) for t in targets)}" if len(targets) > 1 else ""))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """``petune recipes ...``; returns the exit code (a bad name or destination raises :class:`ConfigError`)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.action == "list":
        names = [n for n in packaged_names() if n.startswith(args.prefix)]
        if not names:
            raise ConfigError(f"no packaged recipe starts with {args.prefix!r}; top-level folders: "
                              + ", ".join(sorted({n.split('/')[0] for n in packaged_names()})))
        print("\n".join(names))
        return 0
    if args.action == "show":
        return _show(args.names, args.composed)
    return _cp(args.names, Path(args.dest))
