"""Hamming search: one FAISS-style index interface over several implementations."""
