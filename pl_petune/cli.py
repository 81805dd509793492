"""`petune`: the Lightning CLI (fit / validate / test) plus pl_petune's own tools.

``petune fit|validate|test`` is a :class:`lightning.pytorch.cli.LightningCLI` (see
:mod:`pl_petune.lightning_cli`); the other subcommands are plain ``argparse`` tools, each living in its own
module and exposing ``main(argv) -> int``. Errors a user can fix end in one line on stderr and exit 2.
"""

from __future__ import annotations

import importlib
import os
import sys

from pl_petune.errors import PetuneError

# subcommand -> "module:function"; each takes argv (list of str) and returns an exit code.
TOOLS = {
    "params": "pl_petune.params:main",
    "sweep": "pl_petune.sweep:main",
    "runs": "pl_petune.runs:main",
    "index": "pl_petune.index:main",
    "report": "pl_petune.report:main",
    "import": "pl_petune.importer:main",
    "features": "pl_petune.features:main",
    "recipes": "pl_petune.recipes_cli:main",
    "export": "pl_petune.export:main",
}
LIGHTNING = ("fit", "validate", "test")


class UsageError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2."""


def _usage() -> str:
    return "usage: petune {" + ",".join(LIGHTNING + tuple(TOOLS)) + "} ... (petune <command> --help)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    cmd = argv[0]
    try:
        if cmd in LIGHTNING:
            from pl_petune.lightning_cli import run_lightning_cli
            from pl_petune.packaged import resolve_config_args

            return run_lightning_cli(resolve_config_args(argv))
        if cmd in TOOLS:
            from pl_petune.usage import one_line_usage

            module, func = TOOLS[cmd].split(":")
            with one_line_usage():
                code = int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
                sys.stdout.flush()  # a closed pipe shows here, not as a traceback at interpreter exit
                return code
    except BrokenPipeError:
        # the reader went away (`petune runs | head`): stop quietly with the shell's SIGPIPE status
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (UsageError, PetuneError) as err:
        print(f"petune {cmd}: error: {err}", file=sys.stderr)
        return 2
    print(f"petune: error: unknown command {cmd!r}; known: {', '.join(LIGHTNING + tuple(TOOLS))}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
