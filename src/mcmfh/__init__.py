"""mcmfh: medical cross-modal hashing retrieval (MCMFH, arXiv:2512.06449) with exact Hamming search."""

__version__ = "0.1.0"

from mcmfh.errors import MCMFHError  # noqa: E402

__all__ = ["MCMFHError", "__version__"]
