"""QIDO-RS listing: studies (date filter) -> series (modality, body part) -> instances.

Only the fields in ``InstanceRef`` are read from the answers; the patient attributes a server sends with every
study are dropped right here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from mcmfh.errors import MCMFHError
from mcmfh.pacs.qido import PacsAnswerError, Paging
from mcmfh.pacs.qido import dataset_value as _value

# Series that hold documents, not images: reports are read from SR series, the others are skipped.
NON_IMAGE_MODALITIES = frozenset({"SR", "KO", "PR", "DOC", "REG", "SEG", "RTSTRUCT"})


@dataclass(frozen=True)
class Filters:
    """Which studies/series to index. Dates are YYYYMMDD (inclusive); empty tuples mean 'all'."""

    since: str | None = None
    until: str | None = None
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                clean = value.replace("-", "")
                if not re.fullmatch(r"\d{8}", clean):
                    raise MCMFHError(f"--{name} {value!r}: expected a date YYYY-MM-DD or YYYYMMDD")
                object.__setattr__(self, name, clean)
        object.__setattr__(self, "modalities", tuple(m.strip().upper() for m in self.modalities if m.strip()))
        object.__setattr__(self, "body_parts", tuple(b.strip().upper() for b in self.body_parts if b.strip()))

    def date_range(self) -> str | None:
        if self.since is None and self.until is None:
            return None
        return f"{self.since or ''}-{self.until or ''}"

    def matches(self, modality: str, body_part: str, study_date: str) -> bool:
        if self.modalities and modality.upper() not in self.modalities:
            return False
        if self.body_parts and body_part.upper() not in self.body_parts:
            return False
        if self.since and (not study_date or study_date < self.since):
            return False
        return not (self.until and (not study_date or study_date > self.until))


@dataclass(frozen=True)
class InstanceRef:
    """One instance as listed: its UIDs and the study-aware metadata we keep (no patient attributes)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str = ""
    body_part: str = ""
    study_date: str = ""
    accession: str = field(default="", compare=False)
    frames: int = 1
    instance_number: int = 0


def _int(dataset: dict, tag: str, default: int) -> int:
    try:
        return int(float(_value(dataset, tag, str(default))))
    except ValueError:
        return default


# DICOM tags (group+element) used below.
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
STUDY_DATE, ACCESSION, MODALITY, BODY_PART = "00080020", "00080050", "00080060", "00180015"
FRAMES, INSTANCE_NUMBER = "00280008", "00200013"


INSTANCE_FIELDS = ["StudyDate", "AccessionNumber", "Modality", "BodyPartExamined", "NumberOfFrames", "InstanceNumber",
                   "SeriesInstanceUID"]  # fmt: skip


def list_instances(client, filters: Filters, paging: Paging,
                   workers: int = 4) -> tuple[list[InstanceRef], list[InstanceRef]]:  # fmt: skip
    """All image instances matching ``filters``, and the SR instances of the same studies (for reports).

    One paged all-instances query (``/instances`` with study and series fields) where the server allows it, which
    keeps a sync with nothing new to a few requests; else a walk studies -> series -> instances. Every query is
    paged by ``paging`` (``mcmfh.pacs.qido``: bounded, and stopped when a page brings nothing new)."""
    import requests

    study_filters = {"StudyDate": filters.date_range()} if filters.date_range() else {}
    refs = []
    try:
        for page in paging.pages(client.search_for_instances, "instances", SOP_UID, search_filters=study_filters,
                                 fields=INSTANCE_FIELDS):  # fmt: skip
            for inst in page:
                modality, body = _value(inst, MODALITY).upper(), _value(inst, BODY_PART).upper()
                if modality == "SR" or (modality not in NON_IMAGE_MODALITIES
                                        and filters.matches(modality, body, _value(inst, STUDY_DATE))):  # fmt: skip
                    refs.append(_ref(inst, inst, inst, modality, body, paging.url))
    except requests.HTTPError as e:
        if e.response is None or e.response.status_code not in (400, 403, 404, 405, 501):
            raise
        return _walk(client, filters, study_filters, paging, workers)
    return _split(refs)


def _ref(study: dict, series: dict, inst: dict, modality: str, body: str, url: str) -> InstanceRef:
    ref = InstanceRef(_value(study, STUDY_UID), _value(series, SERIES_UID), _value(inst, SOP_UID), modality, body,
                      _value(study, STUDY_DATE), _value(study, ACCESSION), max(1, _int(inst, FRAMES, 1)),
                      _int(inst, INSTANCE_NUMBER, 0))  # fmt: skip
    if not (ref.study_uid and ref.series_uid and ref.sop_uid):
        raise PacsAnswerError(f"{url}: the PACS answered but a listed instance lacks its StudyInstanceUID, "
                              "SeriesInstanceUID or SOPInstanceUID; check the PACS's QIDO-RS answers")  # fmt: skip
    return ref


def _split(found: list[InstanceRef]) -> tuple[list[InstanceRef], list[InstanceRef]]:
    studies = {r.study_uid for r in found if r.modality != "SR"}
    images = [r for r in found if r.modality != "SR"]
    reports = [r for r in found if r.modality == "SR" and r.study_uid in studies]
    return _unique(images), _unique(reports)


def _walk(client, filters: Filters, study_filters: dict, paging: Paging,
          workers: int) -> tuple[list[InstanceRef], list[InstanceRef]]:  # fmt: skip
    from concurrent.futures import ThreadPoolExecutor

    studies = [s for page in paging.pages(client.search_for_studies, "studies", STUDY_UID,
                                          search_filters=study_filters, fields=["StudyDate", "AccessionNumber"])
               for s in page]  # fmt: skip

    def one_study(study: dict) -> list[InstanceRef]:
        uid, date = _value(study, STUDY_UID), _value(study, STUDY_DATE)
        out = []
        series_list = [s for page in paging.pages(client.search_for_series, "series", SERIES_UID,
                                                  study_instance_uid=uid, fields=["Modality", "BodyPartExamined"])
                       for s in page]  # fmt: skip
        for series in series_list:
            modality, body = _value(series, MODALITY).upper(), _value(series, BODY_PART).upper()
            is_report = modality == "SR"
            if not is_report and (modality in NON_IMAGE_MODALITIES or not filters.matches(modality, body, date)):
                continue
            series_uid = _value(series, SERIES_UID)
            fields = ["NumberOfFrames", "InstanceNumber"]
            for page in paging.pages(client.search_for_instances, "instances", SOP_UID, study_instance_uid=uid,
                                     series_instance_uid=series_uid, fields=fields):  # fmt: skip
                out.extend(_ref(study, series, inst, modality, body, paging.url) for inst in page)
        return out

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return _split([ref for refs in pool.map(one_study, studies) for ref in refs])


def _unique(refs: Sequence[InstanceRef]) -> list[InstanceRef]:
    seen: dict[str, InstanceRef] = {}
    for r in refs:
        seen.setdefault(r.sop_uid, r)
    return sorted(seen.values(), key=lambda r: (r.study_date, r.study_uid, r.series_uid, r.instance_number, r.sop_uid))
