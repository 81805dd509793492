"""``python -m pl_petune``: the ``petune`` command, as sweep commands and ``wandb agent`` run it.

A ``--config recipes/<name>.yaml`` that is not a file in the working directory is the packaged recipe of that
name (:func:`pl_petune.packaged.resolve_configs`), so an installed pl_petune runs the sweep files anywhere.
"""

import sys

from pl_petune.cli import main
from pl_petune.packaged import resolve_configs

sys.exit(main(resolve_configs(sys.argv[1:])))
