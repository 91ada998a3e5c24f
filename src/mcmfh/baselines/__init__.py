"""Baseline hashing methods on the same frozen features (each module registers one method)."""

from mcmfh.baselines import (  # noqa: F401
    cca_itq,
    cca_sign,
    chance,
    continuous_cca,
    dcmht,
    dgcpn,
    djsrh,
    dsph,
    jdsh,
    lsh,
    mcmfh_supervised,
    tripah,
    ucch,
    ucmfh,
)
