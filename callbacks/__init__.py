"""Reusable Lightning callbacks (installed as ``pl_petune.callbacks``).

They depend on lightning and torch only (PEFT optional), never on pl_petune's other modules, so they drop
into any project's Trainer.
"""

from pl_petune.callbacks.selection import ParamSelector, SelectionError, count, params_by_name, set_trainable

__all__ = ["ParamSelector", "SelectionError", "set_trainable", "params_by_name", "count"]
