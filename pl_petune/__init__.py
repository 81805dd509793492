"""pl_petune: parameter-efficient tuning research under a fair protocol, as PyTorch Lightning plugins."""

__version__ = "0.1.0"
