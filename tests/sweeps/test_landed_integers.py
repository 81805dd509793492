"""An integer a sweep gives a Lightning int-or-float option stays an integer all the way to the parsed run
(``limit_train_batches: 1`` is one batch; 1.0 would be every batch)."""

from __future__ import annotations

import pytest

from pl_petune.sweep import SweepError, plan
from pl_petune.sweep.plan import _check_landed


def _sweep(value):
    return {"name": "ints", "method": "grid", "metric": {"name": "dev/loss", "goal": "minimize"},
            "command": ["${env}", "${interpreter}", "-m", "pl_petune", "fit", "--config", "recipes/quickstart.yaml",
                        "${args}"],
            "parameters": {"trainer.limit_train_batches": {"value": value}, "run.seed": {"values": [1]}}}


@pytest.mark.parametrize("value, kind", [(1, int), (0.5, float)])
def test_the_parsed_run_holds_the_type_the_sweep_gave(value, kind, fit_parser, in_root):
    (run,) = plan(_sweep(value), parser=fit_parser)
    parsed = fit_parser.parse(run.command[run.command.index("fit"):])
    got = parsed["fit"]["trainer.limit_train_batches"] if "fit" in parsed else parsed["trainer.limit_train_batches"]
    assert type(got) is kind and got == value


def test_an_integer_turned_float_on_the_way_is_refused():
    with pytest.raises(SweepError, match="limit_train_batches.*given 1 .*holds 1.0"):
        _check_landed({"trainer.limit_train_batches": 1.0}, {"trainer.limit_train_batches": 1}, "run 0")
    _check_landed({"model.init_args.lr": 1.0}, {"model.init_args.lr": 1}, "run 0")  # a float option: same number
