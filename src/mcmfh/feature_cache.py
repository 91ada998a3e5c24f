"""The import path docs/encoders.md gave ``run_encode`` / ``encode_dataset`` before issue 24 named the module
``mcmfh.encode_features``; kept so code written against it still runs."""

from mcmfh.encode_features import encode_dataset, run_encode

__all__ = ["encode_dataset", "run_encode"]
