"""Dataset loaders: one record type (``Record``), many sources."""

from mcmfh.data.records import SPLITS, Dataset, LoadReport, Record, build_vocab

__all__ = ["SPLITS", "Dataset", "LoadReport", "Record", "build_vocab"]
