"""What every loader shares: bad-item bookkeeping, the per-item checks, hash splits and CSV reading with line numbers.

A loader turns its source into ``Candidate`` items (one per would-be record, with ``where`` = "file:line") and hands
them to ``finalize``, which applies the same checks for every dataset, so the rules for bad input live in one place.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mcmfh.data.images import check_image
from mcmfh.data.records import SPLITS, Dataset, LoadReport, build_vocab
from mcmfh.errors import DataError
from mcmfh.items import Item

# How many bad items an error message quotes; the rest are counted (``--skip-bad`` writes the full list to a file).
_QUOTE_FIRST = 3

# The longest CSV field accepted, in characters. A longer cell (a pasted 10 MB report, a binary blob) makes its row a
# bad item; the csv module's own limit is raised past it so one such cell cannot fail the whole file.
MAX_FIELD_CHARS = 1_000_000
_CSV_READER_LIMIT = 2**31 - 1  # the largest value csv.field_size_limit accepts on every platform

DEFAULT_ENCODING = "utf-8"


class Issues:
    """Collects bad items so that a load either fails once, listing them, or skips them all (``skip_bad``)."""

    def __init__(self, dataset: str, skip_bad: bool) -> None:
        self.dataset = dataset
        self.skip_bad = skip_bad
        self.items: list[tuple[str, str]] = []

    def bad(self, where: str, why: str) -> None:
        self.items.append((where, why))

    def raise_if_bad(self) -> None:
        if self.items and not self.skip_bad:
            first = "; ".join(f"{w}: {why}" for w, why in self.items[:_QUOTE_FIRST])
            raise DataError(
                f"{self.dataset}: {len(self.items)} bad item(s) — {first}"
                f"{' ...' if len(self.items) > _QUOTE_FIRST else ''} "
                "(fix them, or pass skip_bad=True / --skip-bad to leave them out and list them in the load report)"
            )


@dataclass
class Candidate:
    """A would-be record plus where it came from (``file:line`` or ``file:id``) for error messages."""

    id: str
    image: Path | None
    text: str
    labels: tuple[str, ...]
    split: str
    where: str
    image_name: str = ""  # as written in the source, for the missing-image report
    study: str = ""  # the study (exam, case) the item belongs to; "" = none given
    title: str = ""  # the case title or diagnosis (``Item.title``); "" = none given


def finalize(
    name: str,
    label_set: str,
    candidates: list[Candidate],
    issues: Issues,
    *,
    missing_image: str = "bad",
    check_images: bool = True,
    min_count: int = 1,
) -> Dataset:
    """Check every candidate and build the ``Dataset``.

    - empty text, unknown split, duplicate id (the second and later occurrences), an image file that exists but whose
      header does not parse: bad items (see ``Issues``);
    - an image named but not on disk: bad when ``missing_image="bad"``; with ``"text_only"`` (sources distributed
      without images, like Open-i and ROCO) the record is kept with ``image=None`` and listed in
      ``report.missing_images``;
    - labels occurring in fewer than ``min_count`` kept records are dropped from records and vocabulary alike.
    """
    if missing_image not in ("bad", "text_only"):
        raise ValueError(f"missing_image must be 'bad' or 'text_only', not {missing_image!r}")
    if min_count < 1:
        raise DataError(f"{name}: min_count must be >= 1, got {min_count}")
    kept: list[Candidate] = []
    seen: dict[str, str] = {}
    report = LoadReport()
    for c in candidates:
        why = _problem(c, seen, check_images)
        if why is not None and why != "missing":
            issues.bad(c.where, why)
            continue
        if why == "missing":
            if missing_image == "bad":
                issues.bad(c.where, f"image file not found: {c.image}")
                continue
            report.missing_images.append(c.image_name or str(c.image))
            c.image = None
        seen[c.id] = c.where
        kept.append(c)
    vocab = build_vocab([c.labels for c in kept], min_count=min_count)
    in_vocab = set(vocab)
    records = [
        Item(
            c.id,
            c.image,
            c.text,
            tuple(t for t in c.labels if t in in_vocab),
            c.split,
            c.study or None,
            title=c.title or None,
        )
        for c in kept
    ]
    return Dataset(name=name, records=records, label_set=label_set, label_vocab=vocab, report=report)


def _problem(c: Candidate, seen: dict[str, str], check_images: bool) -> str | None:
    if not c.id:
        return "empty id"
    if c.id in seen:
        return f"duplicate id {c.id!r} (first at {seen[c.id]})"
    if not c.text.strip():
        return "empty text"
    if c.split not in SPLITS:
        return f"unknown split {c.split!r} (expected one of {list(SPLITS)})"
    if c.image is None:
        return None
    if not c.image.is_file():
        return "missing"
    if check_images:
        try:
            check_image(c.image)
        except DataError as e:
            return str(e)
    return None


def hash_split(key: str, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """Deterministic train/dev/test assignment from a SHA-256 of ``seed:key``.

    Stable across runs, machines and Python versions (unlike ``hash()``), and independent of the order or the number
    of items, so adding a study never moves another one to a different split.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < fractions[0]:
        return "train"
    return "dev" if u < fractions[0] + fractions[1] else "test"


def split_labels(cell: str | None, sep: str = ";") -> tuple[str, ...]:
    """``"a; b;;c"`` -> ``("a", "b", "c")``: stripped, empty parts dropped, order kept, duplicates removed."""
    if not cell:
        return ()
    return tuple(dict.fromkeys(t.strip() for t in cell.split(sep) if t.strip()))


def _codec(encoding: str) -> str:
    """The codec to open with: a UTF-8 BOM is dropped; an unknown encoding name is a DataError."""
    import codecs

    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"--encoding {encoding!r}: unknown text encoding (e.g. utf-8, latin-1, cp1252)") from None
    return "utf-8-sig" if name == "utf-8" else name


def _first_bad_line(path: Path, codec: str) -> int | None:
    """The 1-based line of the first byte that does not decode (a text stream's error offset is per buffer)."""
    try:
        with open(path, "rb") as f:
            for i, raw in enumerate(f, start=1):
                try:
                    raw.decode(codec)
                except UnicodeDecodeError:
                    return i
    except OSError:
        return None
    return None


def _decode_error(path: Path, e: UnicodeDecodeError, encoding: str, line: int | None = None) -> DataError:
    line = _first_bad_line(path, _codec(encoding)) or line
    where = f"{path}:{line}" if line is not None else str(path)
    return DataError(
        f"{where}: not valid {encoding} text (byte {e.object[e.start : e.start + 1]!r}); save the file as "
        f"{encoding} or pass its encoding, e.g. --encoding latin-1"
    )


def read_lines(path: Path, encoding: str = DEFAULT_ENCODING) -> list[str]:
    """The lines of a text file in ``encoding`` (a UTF-8 BOM is dropped); unreadable or mis-encoded files raise."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return raw.decode(_codec(encoding)).splitlines()
    except UnicodeDecodeError as e:
        raise _decode_error(path, e, encoding, raw[: e.start].count(b"\n") + 1) from None


def read_csv_rows(
    path: Path,
    required: tuple[str, ...],
    issues: Issues,
    encoding: str = DEFAULT_ENCODING,
    max_field_chars: int = MAX_FIELD_CHARS,
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line, row)`` with the 1-based physical line where the row starts (the header is line 1).

    Missing required columns raise at once (nothing would load); a row with the wrong number of fields or a field
    longer than ``max_field_chars`` is a bad item. Bytes that are not valid ``encoding`` raise, naming the line.
    """
    if csv.field_size_limit() < _CSV_READER_LIMIT:
        csv.field_size_limit(_CSV_READER_LIMIT)
    codec = _codec(encoding)
    try:
        f = open(path, newline="", encoding=codec)  # noqa: SIM115 (closed in finally; generator)
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None
    start = 1
    try:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file; expected a header with columns {list(required)}") from None
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; expected {list(required)}, found {header}")
        start = reader.line_num + 1
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not any(x.strip() for x in fields):
                continue  # blank line
            if len(fields) != len(header):
                issues.bad(f"{path}:{line}", f"expected {len(header)} fields, found {len(fields)}")
                continue
            long = [(h, len(v)) for h, v in zip(header, fields, strict=True) if len(v) > max_field_chars]
            if long:
                issues.bad(f"{path}:{line}", f"field {long[0][0]!r} has {long[0][1]} characters; "
                                             f"the limit is {max_field_chars}")  # fmt: skip
                continue
            yield line, dict(zip(header, fields, strict=True))
    except UnicodeDecodeError as e:
        raise _decode_error(path, e, encoding, start) from None
    except csv.Error as e:
        raise DataError(f"{path}:{start}: malformed CSV ({e})") from None
    finally:
        f.close()


def write_skip_report(path: Path, skipped: list[tuple[str, str]]) -> Path:
    """Write every skipped item as ``where<TAB>why`` lines (atomically) and return the path."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write("where\twhy\n")
        for where, why in skipped:
            f.write(f"{where}\t{' '.join(why.split())}\n")
    os.replace(tmp, path)
    return path
