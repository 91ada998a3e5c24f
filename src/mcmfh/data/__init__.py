"""Dataset loaders: one item type (``mcmfh.items.Item``), many sources, one entry point (``load_dataset``)."""

from mcmfh.data.images import check_image, load_image
from mcmfh.data.loader_spec import register_loader
from mcmfh.data.records import SPLITS, Dataset, LoadReport, build_vocab
from mcmfh.data.registry import available_datasets, dataset_from_source, load_dataset

__all__ = [
    "SPLITS",
    "Dataset",
    "LoadReport",
    "available_datasets",
    "build_vocab",
    "check_image",
    "dataset_from_source",
    "load_dataset",
    "load_image",
    "register_loader",
]
