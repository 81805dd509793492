"""The run policy of ``petune fit|validate|test``, as plain checks on a parsed config (its ``run.*`` options).

:func:`refuse_overwritten` refuses the ``fit`` options ``petune fit`` sets itself; :func:`check_not_complete`
stops a run whose record is already complete (in the store or its run folder); :func:`heldout_permission`
decides what ``petune test`` may score. :class:`~pl_petune.lightning_cli.PetuneCLI` calls them; none of them
builds anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from pl_petune.callbacks._common import file_sha256
from pl_petune.data.protocols import LEAKY
from pl_petune.errors import ConfigError
from pl_petune.record_build import summary_line
from pl_petune.store import Store, default_store_path


class AlreadyComplete(Exception):
    """The run's record is complete in the store: nothing to train (``run.rerun`` forces it)."""


def check_not_complete(run: Any, key: str, run_dir: Path) -> None:
    """Stop a run whose record is complete in the store or in its run folder (another node may have run it).

    Raises:
        AlreadyComplete: with the record's summary line, unless ``run.rerun``.
    """
    if run.rerun:
        return
    store_path = Path(run.store or default_store_path())
    done = Store(store_path).get(key) if store_path.is_file() else None
    if done is not None and done.get("status") == "complete":
        raise AlreadyComplete(f"petune: run {key} is already complete in {store_path}: "
                              f"{summary_line(done)} (--run.rerun true trains it again)")
    from pl_petune.index import read_record  # the run folder is the truth

    done = read_record(run_dir)
    if done is not None and done.get("status") == "complete" and done.get("run_key") == key:
        raise AlreadyComplete(f"petune: run {key} is already complete in {run_dir / 'record.json'}: "
                              f"{summary_line(done)} (--run.rerun true trains it again)")


def refuse_overwritten(cfg: Any) -> None:
    """Refuse the ``fit`` options that ``petune fit`` sets itself, instead of overwriting them silently.

    Raises:
        ConfigError: ``trainer.default_root_dir`` or ``checkpoint.dirpath`` (the run folder decides both),
            ``seed_everything`` (the run's two seeds decide), or ``run.allow_leaky_test`` (for ``petune test``).
    """
    folder = "each run writes into its run folder <run.out_dir>/<task>/<method>/<run key>/; set --run.out_dir"
    for key in ("trainer.default_root_dir", "checkpoint.dirpath"):
        value = cfg[key]
        if value is not None:
            raise ConfigError(f"{key} {str(value)!r} is set by petune fit: {folder}")
    seed = cfg.get("seed_everything")
    if seed is not None and seed is not False:  # 0 is a seed too (0 == False)
        raise ConfigError(f"seed_everything {seed!r} is not used by petune fit: data.data_seed seeds the split, the "
                          "data order and dropout, model.init_args.init_seed the new parameters; --run.seed S sets "
                          "both")
    if cfg.run.allow_leaky_test:
        raise ConfigError("run.allow_leaky_test is for petune test; petune fit scores the held-out split once, "
                          "with its best-on-dev checkpoint")


def heldout_permission(cfg: Any) -> Optional[str]:
    """What ``petune test`` may score: ``"leaky"`` (asked for), the checkpoint path (the recorded best-on-dev
    checkpoint of a complete run with the same split), or None (a leaky protocol: nothing is held out).

    Raises:
        ConfigError: none of these: the held-out split would be scored outside the protocol.
    """
    if cfg.run.allow_leaky_test:
        return "leaky"
    if cfg.data.protocol in LEAKY:
        return None
    hint = ("petune test scores the held-out split only with the best-on-dev checkpoint of a complete run "
            "(<run folder>/checkpoints/, kept with --run.keep_checkpoints true); --run.allow_leaky_test true "
            "scores it anyway, marked leaky")
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        raise ConfigError(f"no --ckpt_path was given; {hint}")
    path = Path(ckpt)
    if not path.is_file():
        raise ConfigError(f"checkpoint {ckpt!r} does not exist; {hint}")
    record_file = path.resolve().parent.parent / "record.json"
    try:
        rec = json.loads(record_file.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"checkpoint {ckpt!r} has no readable run record at {str(record_file)!r}; {hint}") from None
    if rec.get("status") != "complete":
        raise ConfigError(f"the run of checkpoint {ckpt!r} is {rec.get('status')!r}, not complete; {hint}")
    if rec.get("best_checkpoint_sha256") != file_sha256(path):
        raise ConfigError(f"checkpoint {ckpt!r} is not the best-on-dev checkpoint its run {rec.get('run_key')} "
                          f"recorded (SHA-256 differs); {hint}")
    mine = {"task": cfg.data.task, "protocol": cfg.data.protocol, "data_seed": cfg.data.data_seed,
            "data.dev_fraction": cfg.data.dev_fraction}
    theirs = {"task": rec.get("task"), "protocol": rec.get("protocol"), "data_seed": rec.get("data_seed"),
              "data.dev_fraction": rec.get("hparams", {}).get("data.dev_fraction", mine["data.dev_fraction"])}
    for key, value in mine.items():
        if theirs[key] != value:
            raise ConfigError(f"checkpoint {ckpt!r} was selected with {key} {theirs[key]!r}, this test has "
                              f"{value!r}: its held-out split is another one; {hint}")
    return str(path)


__all__ = ["AlreadyComplete", "check_not_complete", "refuse_overwritten", "heldout_permission"]
