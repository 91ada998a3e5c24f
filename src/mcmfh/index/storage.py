"""The import path docs/index.md gave ``ItemIndex`` before issue 24 named the local store ``mcmfh.index.local_store``;
kept so code written against it still runs."""

from mcmfh.index.local_store import ItemIndex

__all__ = ["ItemIndex"]
