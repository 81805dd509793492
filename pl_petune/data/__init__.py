"""Task data: sources (local files, hub), protocols (pure split functions), the LightningDataModule."""

from pl_petune.data.module import HeldOutAccessError, TaskDataModule
from pl_petune.data.protocols import PROTOCOLS, SplitError, make_split
from pl_petune.data.sources import DataError, load_split

__all__ = ["TaskDataModule", "HeldOutAccessError", "PROTOCOLS", "SplitError", "make_split", "DataError",
           "load_split"]
