"""What identifies a run: the config keys that change its numbers, and the run key hashed from them.

A run's key is a hash of its *identity*: every flattened ``fit`` config key except those in
:data:`NON_IDENTITY` (where a run writes, how it logs), and of those only the ones whose value differs from
the default (plus :data:`ALWAYS_IDENTITY`). Leaving defaults out keeps a run's key stable when a later
pl_petune adds an option with a default, so a sweep resumed after an upgrade still skips its finished runs.
"""

from __future__ import annotations

import importlib
from typing import Any

from pl_petune.errors import ConfigError
from pl_petune.records import flatten, run_key

# Config keys that do not change a run's numbers: left out of its key.
NON_IDENTITY = frozenset({
    "config", "run", "ckpt_path", "verbose",
    "data.data_dir", "data.num_workers", "data.eval_batch_size",
    "trainer.logger", "trainer.default_root_dir", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.log_every_n_steps", "trainer.devices", "trainer.accelerator",
    "checkpoint.dirpath", "checkpoint.filename", "checkpoint.save_last", "checkpoint.verbose",
    "checkpoint.save_top_k", "early_stopping.verbose",
})

# Keys that always identify a run, even at their default values.
ALWAYS_IDENTITY = ("model.class_path", "model.init_args.backbone", "model.init_args.init_seed", "model.init_args.lr",
                   "data.task", "data.protocol", "data.data_seed", "data.max_length", "data.batch_size",
                   "trainer.max_epochs", "early_stopping.monitor", "early_stopping.patience")

_DEFAULTS: dict[str, dict[str, Any]] = {}
_DEFAULT_MODE = "min"  # the parser's default for both modes; a mode set to anything else must agree


def to_dict(namespace: Any) -> Any:
    """A parsed jsonargparse namespace as plain dicts and lists (private ``__*`` keys dropped)."""
    from jsonargparse import Namespace

    if isinstance(namespace, Namespace):
        return {k: to_dict(v) for k, v in vars(namespace).items() if not k.startswith("__")}
    if isinstance(namespace, (list, tuple)):
        return [to_dict(v) for v in namespace]
    if isinstance(namespace, dict):  # e.g. data.ood: a dict of dataclass namespaces
        return {k: to_dict(v) for k, v in namespace.items()}
    return namespace


def drop_non_identity(flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` without the keys under :data:`NON_IDENTITY` (where a run writes, how it logs)."""
    return {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in NON_IDENTITY)}


def hparams(cfg: Any) -> dict[str, Any]:
    """Every identifying key of a parsed ``fit`` config, flattened, defaults included (the record's ``hparams``)."""
    return drop_non_identity(flatten(to_dict(cfg)))


def _defaults(class_path: str) -> dict[str, Any]:
    """The flattened default config of a ``fit`` run of ``class_path`` (cached)."""
    if class_path not in _DEFAULTS:
        from pl_petune.lightning_cli import parse_only

        _DEFAULTS[class_path] = flatten(to_dict(parse_only(["fit", "--model.class_path", class_path])["fit"]))
    return _DEFAULTS[class_path]


def identity(cfg: Any) -> dict[str, Any]:
    """The config keys that identify a run, flattened: those not in :data:`NON_IDENTITY` whose value differs
    from the default, plus :data:`ALWAYS_IDENTITY`.

    Args:
        cfg: a parsed ``fit`` config (after :func:`apply_protocol`).
    """
    flat = flatten(to_dict(cfg))
    defaults = _defaults(flat["model.class_path"])
    # the type counts too: limit_train_batches 1 (one batch) is not 1.0 (all of them)
    ident = {k: v for k, v in drop_non_identity(flat).items()
             if k in ALWAYS_IDENTITY or k not in defaults or defaults[k] != v or type(defaults[k]) is not type(v)}
    from pl_petune.tasks import get_task

    version = get_task(flat["data.task"]).input_version
    if version != 1:  # COPA and WiC read PETuning's text since version 2: their old runs are other runs
        ident["data.input_version"] = version
    return ident


def apply_protocol(cfg: Any):
    """Apply the tied seed and the monitor's direction to a parsed ``fit`` config; return the task spec.

    Raises:
        ConfigError: the monitor is not a development-split metric the task logs.
    """
    run = cfg.run
    if run.seed is not None:
        cfg.data.data_seed = run.seed
        cfg.model.init_args.init_seed = run.seed
    from pl_petune.tasks import get_task

    spec = get_task(cfg.data.task)
    monitor = cfg.early_stopping.monitor
    logged = "dev/loss, " + ", ".join(f"dev/{m.name}" for m in spec.metrics)
    if not monitor.startswith("dev/"):
        raise ConfigError(f"early_stopping.monitor {monitor!r} is not a development-split metric; allowed: {logged}")
    try:
        higher = spec.direction(monitor)
    except KeyError as err:
        raise ConfigError(f"early_stopping.monitor {monitor!r} is never logged for task {spec.name}; "
                          f"logged: {logged}") from err
    mode = "max" if higher else "min"
    for key in ("early_stopping.mode", "checkpoint.mode"):
        if cfg[key] == ("min" if higher else "max") and cfg[key] != _DEFAULT_MODE:
            raise ConfigError(f"{key} {cfg[key]!r} contradicts early_stopping.monitor {monitor!r}, which is "
                              f"{'higher' if higher else 'lower'}-is-better; the mode follows the monitor: leave it "
                              f"out (or set {mode!r})")
    cfg.early_stopping.mode = cfg.checkpoint.mode = mode
    return spec


def method_name(class_path: str) -> str:
    """The registry name of the model class (its ``method_name``), else the class name."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return name or class_path
    return getattr(cls, "method_name", name)


def run_key_for(argv: list[str], config: Any = None) -> str:
    """The run key ``petune <argv>`` would give its run, computed without building or training anything.

    Sweep runners use it to skip or claim a run before launching it. It applies the same rule as ``petune
    fit``: the tied seed, the monitor's direction, then a hash of every identifying config key.

    Args:
        argv: a ``fit --config <recipe> <overrides>`` argv, as given to ``petune``.
        config: the namespace :func:`pl_petune.lightning_cli.parse_only` already returned for ``argv`` (saves
            parsing twice); it is modified in place as ``petune fit`` would modify it.

    Returns:
        The 16-hex run key, the last folder of ``<run.out_dir>/<task>/<method>/<key>/``.

    Raises:
        SystemExit: code 2, when ``argv`` does not parse (as the CLI would).
        ConfigError: the task or the monitor is unknown, or the subcommand is not ``fit``.
    """
    if config is None:
        from pl_petune.lightning_cli import parse_only

        config = parse_only(argv)
    if config.get("subcommand") != "fit":
        raise ConfigError(f"run keys exist for 'fit' runs only, got subcommand {config.get('subcommand')!r}")
    fit = config["fit"]
    apply_protocol(fit)
    return run_key(identity(fit))
