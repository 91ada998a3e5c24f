"""Baseline hashing methods on the same frozen features (each module registers one method)."""
