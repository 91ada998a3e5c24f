"""Reports for studies: the text of DICOM Structured Report content items, or a file exported from the RIS.

A report file is CSV (header row) or JSONL with a ``report`` column and a key column: ``accession_number`` or
``study_instance_uid``. Only content item text is read from an SR; its header (patient module) is not.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from mcmfh.errors import DataError
from mcmfh.pacs.failures import failure_reason
from mcmfh.pacs.query import InstanceRef

KEYS = ("accession_number", "study_instance_uid")


def sr_text(ds) -> str:
    """The report text of an SR dataset: TEXT values and CODE meanings of its content tree, in document order."""
    parts: list[str] = []

    def walk(items: Iterable) -> None:
        for item in items:
            kind = str(item.get("ValueType", ""))
            if kind == "TEXT" and item.get("TextValue"):
                parts.append(str(item.TextValue).strip())
            elif kind == "CODE" and item.get("ConceptCodeSequence"):
                parts.append(str(item.ConceptCodeSequence[0].get("CodeMeaning", "")).strip())
            if item.get("ContentSequence"):
                walk(item.ContentSequence)

    walk(ds.get("ContentSequence", []))
    return "\n".join(p for p in parts if p)


class ReportFile:
    """Report texts keyed by accession number and/or StudyInstanceUID."""

    def __init__(self, by_accession: dict[str, str], by_study: dict[str, str]) -> None:
        self.by_accession, self.by_study = by_accession, by_study

    @classmethod
    def load(cls, path: str | Path) -> ReportFile:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: report file not found")
        rows = list(_rows(path))
        by_accession: dict[str, str] = {}
        by_study: dict[str, str] = {}
        for where, row in rows:
            text = str(row.get("report") or "").strip()
            if not text:
                raise DataError(f"{where}: empty or missing 'report'")
            keys = {k: str(row.get(k) or "").strip() for k in KEYS}
            if not any(keys.values()):
                raise DataError(f"{where}: needs 'accession_number' or 'study_instance_uid'")
            if keys["accession_number"]:
                by_accession[keys["accession_number"]] = text
            if keys["study_instance_uid"]:
                by_study[keys["study_instance_uid"]] = text
        return cls(by_accession, by_study)

    def text_for(self, ref: InstanceRef) -> str | None:
        return self.by_study.get(ref.study_uid) or (self.by_accession.get(ref.accession) if ref.accession else None)


def _rows(path: Path):
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: expected a JSON object")
            yield f"{path}:{n}", row
        return
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "report" not in reader.fieldnames:
            raise DataError(f"{path}: expected a CSV header with 'report' and 'accession_number' or "
                            "'study_instance_uid'")  # fmt: skip
        for n, row in enumerate(reader, 2):
            yield f"{path}:{n}", row


def sr_reports(client, refs: Sequence[InstanceRef], studies: set[str],
               failed: Callable[[str, str], None]) -> dict[str, str]:  # fmt: skip
    """Per study in ``studies``: the text of its latest SR (by ContentDate/Time, then InstanceNumber).

    An SR that cannot be fetched is passed to ``failed(sop_uid, reason)``; its study then has no report this time
    (retried next sync)."""
    best: dict[str, tuple[tuple[str, str, int], str]] = {}
    for ref in refs:
        if ref.study_uid not in studies:
            continue
        try:
            ds = client.retrieve_instance(ref.study_uid, ref.series_uid, ref.sop_uid)
        except Exception as e:  # the message may quote a URL but never a header value: the mapped reason only
            failed(ref.sop_uid, failure_reason(e))
            continue
        text = sr_text(ds)
        if not text:
            continue
        rank = (str(ds.get("ContentDate", "")), str(ds.get("ContentTime", "")), ref.instance_number)
        if ref.study_uid not in best or rank > best[ref.study_uid][0]:
            best[ref.study_uid] = (rank, text)
    return {study: text for study, (_, text) in best.items()}
