"""The finetuning regularisers of EH-FT's baselines: :mod:`~pl_petune.callbacks.mixout` (Mixout) and
:mod:`~pl_petune.callbacks.child_tuning` (Child-Tuning_D). Kept so ``pl_petune.callbacks.regularizers`` imports
keep working; each callback lives in its own module.
"""

from pl_petune.callbacks.child_tuning import ChildTuningD, pack_bits, unpack_bits
from pl_petune.callbacks.mixout import Mixout, disable_dropout

__all__ = ["Mixout", "ChildTuningD", "disable_dropout", "pack_bits", "unpack_bits"]
