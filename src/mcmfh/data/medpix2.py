"""MedPix 2.0 (Siragusa et al., 2025): 2,050 CT/MR images with their own captions, from 671 teaching cases.

Layout (what ``mcmfh prepare medpix2`` writes, and what ../shared/data/medpix2 holds): ``medpix2.csv`` with one row
per image — ``id, image, text, labels, labels_coarse, case_id, split`` and more — and the images it names.

Label sets:
- ``labels`` (default): ``loc:<Location>;cat:<disease category>``, curated per case (90 tags, sparse relevance);
- ``labels_coarse``: ``type:<CT|MR>;loccat:<body region>`` (denser relevance).

Splits are the dataset authors' case-level split (no case crosses splits): train 1,653 / dev 197 / test 200.
Studies are the teaching cases (``case_id``): 671 cases of one or more images, each image with its own caption.
Titles (``Item.title``) are the cases' diagnoses (``case_diagnosis``, e.g. "Bladder Diverticulum"): every case has
one; it equals ``case_title`` in 669 of the 671 cases, and where they differ the title carries an HTML entity.
"""

from __future__ import annotations

from pathlib import Path

from mcmfh.data.build import Issues, finalize
from mcmfh.data.generic import load_rows_csv
from mcmfh.data.loader_spec import register_loader
from mcmfh.data.records import Dataset
from mcmfh.errors import DataError

CSV_NAME = "medpix2.csv"
LABEL_SETS = ("labels", "labels_coarse")


@register_loader("medpix2", LABEL_SETS, "labels", "MedPix 2.0: 2,050 CT/MR images with captions (authors' split)")
def load_medpix2(root: Path, label_set: str, issues: Issues, min_count: int = 1, check_images: bool = True) -> Dataset:
    path = root if root.is_file() else root / CSV_NAME
    if not path.is_file():
        raise DataError(f"{path}: not found; run `mcmfh prepare medpix2 --out DIR` to create the MedPix 2.0 layout")
    cands = load_rows_csv(path, label_set, issues, require_id=True, study_column="case_id",
                          title_column="case_diagnosis")  # fmt: skip
    return finalize("medpix2", label_set, cands, issues, check_images=check_images, min_count=min_count)
