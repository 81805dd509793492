"""``petune recipes list|show|cp``: the recipes shipped with pl_petune, for users who installed it (no checkout).

``--config`` of ``petune fit`` accepts the same names (``petune fit --config methods/lora``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Optional

from pl_petune.errors import ConfigError
from pl_petune.packaged import packaged_names, recipes_root, resolve_config


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage dump
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="petune recipes", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    ls = sub.add_parser("list", help="the packaged recipe names")
    ls.add_argument("prefix", nargs="?", default="", help="only names starting with this (e.g. papers/ehft)")
    show = sub.add_parser("show", help="print one recipe")
    show.add_argument("name")
    cp = sub.add_parser("cp", help="copy a recipe (or a folder of them) to edit it")
    cp.add_argument("name")
    cp.add_argument("dest")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.action == "list":
        names = [n for n in packaged_names() if n.startswith(args.prefix)]
        if not names:
            raise ConfigError(f"no packaged recipe starts with {args.prefix!r}; top-level folders: "
                              + ", ".join(sorted({n.split('/')[0] for n in packaged_names()})))
        print("\n".join(names))
        return 0
    if args.action == "show":
        sys.stdout.write(Path(resolve_config(args.name)).read_text(encoding="utf-8"))
        return 0
    dest = Path(args.dest)
    folder = recipes_root() / args.name.strip("/")
    if folder.is_dir():  # a whole folder (e.g. papers/ehft/table1)
        if dest.exists():
            raise ConfigError(f"destination {str(dest)!r} exists; give a new folder name")
        shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
        print(f"petune: copied {sum(1 for _ in dest.rglob('*.yaml'))} recipes to {dest}")
        return 0
    source = Path(resolve_config(args.name))
    target = dest / source.name if dest.is_dir() else dest
    if target.exists():
        raise ConfigError(f"destination {str(target)!r} exists; remove it or give another name")
    shutil.copyfile(source, target)
    print(f"petune: copied {source.name} to {target}")
    return 0
