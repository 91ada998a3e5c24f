"""The MCMFH model: DV-MLP, MoE fusion transformer, hashing heads. Importing registers the methods
``mcmfh``, ``mcmfh-no-moe``, ``mcmfh-no-dv`` and ``mcmfh-no-gateloss``."""

from mcmfh.model import mcmfh as _mcmfh  # noqa: F401  (registers the methods)
from mcmfh.model.config import MCMFHConfig

__all__ = ["MCMFHConfig"]
