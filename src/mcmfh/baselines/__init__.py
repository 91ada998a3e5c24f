"""Baseline hashing methods on the same frozen features (each module registers one method)."""

from mcmfh.baselines import cca_itq, cca_sign, chance, continuous_cca, lsh, ucmfh  # noqa: F401
