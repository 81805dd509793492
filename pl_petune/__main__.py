"""``python -m pl_petune``: the ``petune`` command, as sweep commands and ``wandb agent`` run it.

A ``--config recipes/<name>.yaml`` that is not a file in the working directory is the packaged recipe of that
name (``petune fit|validate|test`` resolve it: :func:`pl_petune.packaged.resolve_config_args`), so an installed
pl_petune runs the sweep files anywhere.
"""

import sys

from pl_petune.cli import main

sys.exit(main(sys.argv[1:]))
