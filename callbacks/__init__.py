"""Reusable Lightning callbacks (installed as ``pl_petune.callbacks``).

They depend on lightning and torch only (PEFT optional, scikit-learn for the L-BFGS probe), never on
pl_petune's other modules, so they drop into any project's Trainer. See docs/callbacks.md.
"""

from pl_petune.callbacks._common import CallbackMisuse
from pl_petune.callbacks.devsplit import DevSplitEarlyStopping, HeldOutTooEarly
from pl_petune.callbacks.freezing import Freezing
from pl_petune.callbacks.regularizers import ChildTuningD, Mixout
from pl_petune.callbacks.selection import ParamSelector, SelectionError, count, params_by_name, set_trainable
from pl_petune.callbacks.warmstart import HeadWarmStart

__all__ = ["ParamSelector", "SelectionError", "set_trainable", "params_by_name", "count", "CallbackMisuse",
           "Freezing", "HeadWarmStart", "DevSplitEarlyStopping", "HeldOutTooEarly", "Mixout", "ChildTuningD"]
