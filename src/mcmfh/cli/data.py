"""Commands that turn a dataset into cached features: ``prepare`` and ``encode``."""
