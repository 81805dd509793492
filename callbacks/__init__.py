"""Reusable Lightning callbacks (installed as ``pl_petune.callbacks``), usable on anyone's LightningModule.

They import lightning, torch and the standard library only (never pl_petune's other modules; scikit-learn
only for ``HeadWarmStart(solver="lbfgs")``), so they install alone (``callbacks/pyproject.toml``) and drop into
any project's Trainer. See docs/callbacks.md.
"""

from pl_petune.callbacks._errors import CallbackMisuse
from pl_petune.callbacks.child_tuning import ChildTuningD
from pl_petune.callbacks.devsplit import DevSplitEarlyStopping, HeldOutTooEarly
from pl_petune.callbacks.features import SaveHeadFeatures
from pl_petune.callbacks.freezing import Freezing
from pl_petune.callbacks.mixout import Mixout
from pl_petune.callbacks.selection import (
           ParamSelector,
           SelectionError,
           count,
           params_by_name,
           set_trainable,
)
from pl_petune.callbacks.warmstart import HeadWarmStart

__all__ = ["ParamSelector", "SelectionError", "set_trainable", "params_by_name", "count", "CallbackMisuse",
           "Freezing", "HeadWarmStart", "DevSplitEarlyStopping", "HeldOutTooEarly", "Mixout", "ChildTuningD",
           "SaveHeadFeatures"]
