"""The MCMFH model: DV-MLP, MoE fusion transformer, hashing heads, study head. Importing registers the methods
``mcmfh``, ``mcmfh-no-moe``, ``mcmfh-no-dv``, ``mcmfh-no-gateloss``, ``mcmfh-no-fusion`` and the ceilings
``continuous-mcmfh``, ``continuous-mcmfh-relaxed``."""

from mcmfh.model import continuous as _continuous  # noqa: F401  (registers the methods)
from mcmfh.model import mcmfh as _mcmfh  # noqa: F401
from mcmfh.model.config import MCMFHConfig, ModelConfig, TrainConfig

__all__ = ["MCMFHConfig", "ModelConfig", "TrainConfig"]
