"""Index studies straight from a PACS over DICOMweb and keep an archive in sync with it.

``client`` (connection, auth from the environment, retries) -> ``query`` (QIDO-RS listing with filters, paged and
checked by ``qido``) -> ``fetch`` (WADO-RS: rendered frame, else pixel data; ``failures`` says why one failed) and
``reports`` (SR content or a report file) -> ``state`` (what has been indexed, inside the archive) -> ``sync`` (the
loop; ``prune`` guards its deletions). ``target`` is the one place that talks to the archive's add/remove API.

Privacy: patient name, id and birth date are never kept. Listing keeps only the UIDs, modality, body part, study date
and accession number (to match a report file); fetched DICOM datasets live in memory only.
"""

from mcmfh.pacs.client import PacsConfig
from mcmfh.pacs.query import Filters
from mcmfh.pacs.sync import SyncOptions, SyncResult, sync

__all__ = ["Filters", "PacsConfig", "SyncOptions", "SyncResult", "sync"]
