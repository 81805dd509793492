"""Run commands as ``wandb agent`` renders them: the ``command`` list with W&B's macros filled in.

``${args}`` renders ``--key=value`` with Python's ``str(value)``, keys in sorted order, exactly as the agent
does; ``${interpreter}`` is the Python running ``petune`` (W&B uses ``python`` from ``PATH``).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Optional, Sequence

from pl_petune.sweep.spec import ARG_MACROS, DEFAULT_COMMAND, SweepError

_ENVVAR = re.compile(r"\$\{envvar:([A-Za-z0-9_]*)\}")


def command_args(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """The argument renderings of W&B's agent for one run config (keys in sorted order).

    ``args``: ``--k=v``; ``args_no_hyphens``: ``k=v``; ``args_no_equals``: ``--k v``;
    ``args_no_boolean_flags``: ``--k`` for true, nothing for false; ``args_json``: one JSON argument;
    the hydra forms ``+k=v`` and ``++k=v``. Values are rendered with ``str()`` as the agent does.
    """
    out: dict[str, list[str]] = {m: [] for m in ARG_MACROS if m != "args_json_file"}
    for key in sorted(config):
        value = config[key]
        flag = f"{key}={value}"
        out["args"].append("--" + flag)
        out["args_no_hyphens"].append(flag)
        out["args_no_equals"] += [f"--{key}", str(value)]
        out["args_append_hydra"].append("+" + flag)
        out["args_override_hydra"].append("++" + flag)
        if isinstance(value, bool):
            if value:
                out["args_no_boolean_flags"].append("--" + key)
        else:
            out["args_no_boolean_flags"].append("--" + flag)
    out["args_json"] = [json.dumps({k: config[k] for k in sorted(config)})]
    return out


def render_command(sweep: Mapping[str, Any], config: Mapping[str, Any], json_file: Optional[str] = None,
                   interpreter: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> list[str]:
    """The command line of one run, macros filled in as ``wandb agent`` fills them.

    Args:
        sweep: the sweep configuration (``command``, ``program``).
        config: the run's config (:func:`expand`).
        json_file: where ``${args_json_file}`` points (the file is written by the runner).
        interpreter: what ``${interpreter}`` becomes. W&B uses ``python`` from ``PATH``; the offline runner
            passes its own interpreter so that an unactivated virtual environment still works.
        env: environment for ``${envvar:NAME}`` (default ``os.environ``; an unset name stays as it is).
    """
    env = os.environ if env is None else env
    vars_: dict[str, list[str]] = dict(command_args(config))
    vars_["env"] = ["/usr/bin/env"] if os.name != "nt" else []
    vars_["interpreter"] = [interpreter or "python"]
    vars_["program"] = [str(sweep["program"])] if sweep.get("program") is not None else []
    vars_["args_json_file"] = [json_file] if json_file else []
    out: list[str] = []
    for token in sweep.get("command") or DEFAULT_COMMAND:
        token = str(token)
        if token.startswith("${") and token.endswith("}") and not token.startswith("${envvar:"):
            out += vars_.get(token[2:-1], [])
        else:
            out.append(_ENVVAR.sub(lambda m: env.get(m.group(1), m.group(1)), token))
    return out


def fit_argv(command: Sequence[str]) -> list[str]:
    """The ``petune`` argv inside a rendered command: from the ``fit`` token on."""
    if "fit" not in command:
        raise SweepError(f"command {' '.join(command)!r} does not run 'fit'; use e.g. [${{env}}, ${{interpreter}}, "
                         "-m, pl_petune, fit, --config, <recipe>, ${args}]")
    return list(command[list(command).index("fit"):])


def check_command_order(command: Sequence[str]) -> None:
    """Refuse ``petune`` argvs whose order would make overrides silently lose (jsonargparse's rule).

    The order is: ``fit``, then ``--config <recipe>`` (one or more), then the overrides.
    """
    argv = fit_argv(command)
    if len(argv) < 3 or not (argv[1] == "--config" or argv[1].startswith("--config=")):
        raise SweepError(f"command {' '.join(command)!r}: 'fit' must be followed by --config <recipe> and then the "
                         "overrides (jsonargparse applies them in order)")


__all__ = ["command_args", "render_command", "fit_argv", "check_command_order"]
