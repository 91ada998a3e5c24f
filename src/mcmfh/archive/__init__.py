"""The archive: a trained run plus its stores, and the modules that coordinate them.

``archive`` (the coordinator, ``Archive``), ``build`` (the folder and how it is made), ``commit`` (the commit record
across sub-indexes), ``agreement`` (sub-indexes checked against each other without a record), ``query`` (the query
coder), ``search`` and ``hybrid`` (search strategies), ``writes`` and ``members`` (adds, study re-coding).
"""

from mcmfh.archive.archive import Archive
from mcmfh.archive.build import drop_server_stores

__all__ = ["Archive", "drop_server_stores"]
