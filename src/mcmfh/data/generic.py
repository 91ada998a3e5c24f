"""Generic ``csv`` and ``jsonl`` loaders, so a hospital can bring its own archive without writing code.

Each row/line is one item with the fields ``image``, ``text``, ``labels``, ``split`` and optionally ``id``:

- ``image``: a path relative to the file's folder (or absolute); PNG, JPEG or DICOM. An empty cell means a text-only
  item; a named file that is missing or whose header does not parse is a bad item.
- ``labels`` (or the column named by ``label_set``): tags separated by ``;`` (in JSONL also a list of strings).
- ``split``: ``train``, ``dev`` or ``test``.
- ``id``: unique; when the column is absent, ids are ``<file stem>-<line>``.
- ``study_id`` (optional): the study (exam, case) the item belongs to. Items sharing it form one study: its images
  and reports are searched together (``mcmfh search --target studies``) and coded as one by models that have a
  study head. An empty cell or no column: the item is a study of its own.

``root`` is the CSV/JSONL file itself, or a folder holding exactly one such file. Files are read as UTF-8 (a BOM is
dropped) unless the ``encoding`` option names another (``--encoding latin-1`` on the CLI). A CSV field longer than
``max_field_chars`` (default ``build.MAX_FIELD_CHARS``, one million characters) makes its row a bad item.
"""

from __future__ import annotations

import json
from pathlib import Path

from mcmfh.data.build import (
    DEFAULT_ENCODING,
    MAX_FIELD_CHARS,
    Candidate,
    Issues,
    finalize,
    read_csv_rows,
    read_lines,
    split_labels,
)
from mcmfh.data.loader_spec import register_loader
from mcmfh.data.records import Dataset
from mcmfh.errors import DataError

REQUIRED = ("image", "text", "split")
STUDY_COLUMN = "study_id"
TITLE_COLUMN = "title"


def _find_file(root: Path, suffixes: tuple[str, ...]) -> Path:
    if root.is_file():
        return root
    found = sorted(p for s in suffixes for p in root.glob(f"*{s}"))
    if len(found) != 1:
        raise DataError(f"{root}: expected exactly one {'/'.join(suffixes)} file in the folder, found {len(found)}")
    return found[0]


def _candidate(
    row: dict[str, object],
    label_set: str,
    base: Path,
    where: str,
    default_id: str,
    study_column: str = STUDY_COLUMN,
    title_column: str = TITLE_COLUMN,
) -> Candidate | str:
    """One row -> Candidate, or the reason it is bad."""
    labels_cell = row.get(label_set)
    if isinstance(labels_cell, list):
        if not all(isinstance(t, str) for t in labels_cell):
            return f"{label_set!r} must be a list of strings or a ';'-separated string"
        labels = tuple(dict.fromkeys(t.strip() for t in labels_cell if t.strip()))
    elif labels_cell is None or isinstance(labels_cell, str):
        labels = split_labels(labels_cell)
    else:
        return f"{label_set!r} must be a list of strings or a ';'-separated string"
    for key in ("image", "text", "split", "id", study_column, title_column):
        if row.get(key) is not None and not isinstance(row[key], str):
            return f"field {key!r} must be a string"
    image_cell = str(row.get("image") or "").strip()
    image = None
    if image_cell:
        p = Path(image_cell)
        image = p if p.is_absolute() else base / p
    return Candidate(
        id=str(row.get("id") or "").strip() or default_id,
        image=image,
        text=str(row.get("text") or "").strip(),
        labels=labels,
        split=str(row.get("split") or "").strip(),
        where=where,
        image_name=image_cell,
        study=str(row.get(study_column) or "").strip(),
        title=" ".join(str(row.get(title_column) or "").split()),
    )


def load_rows_csv(
    path: Path,
    label_set: str,
    issues: Issues,
    require_id: bool = False,
    encoding: str = DEFAULT_ENCODING,
    max_field_chars: int = MAX_FIELD_CHARS,
    study_column: str = STUDY_COLUMN,
    title_column: str = TITLE_COLUMN,
) -> list[Candidate]:
    required = REQUIRED + (label_set,) + (("id",) if require_id else ())
    out: list[Candidate] = []
    for line, row in read_csv_rows(path, required, issues, encoding=encoding, max_field_chars=max_field_chars):
        c = _candidate(row, label_set, path.parent, f"{path}:{line}", f"{path.stem}-{line}", study_column, title_column)
        if isinstance(c, str):
            issues.bad(f"{path}:{line}", c)
        else:
            out.append(c)
    return out


def load_rows_jsonl(path: Path, label_set: str, issues: Issues, encoding: str = DEFAULT_ENCODING) -> list[Candidate]:
    required = REQUIRED + (label_set,)
    out: list[Candidate] = []
    lines = read_lines(path, encoding)
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path}:{i}"
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            issues.bad(where, f"not valid JSON ({e.msg})")
            continue
        if not isinstance(row, dict):
            issues.bad(where, "expected a JSON object per line")
            continue
        missing = [k for k in required if k not in row]
        if missing:
            issues.bad(where, f"missing field(s) {missing}; expected {list(required)}")
            continue
        c = _candidate(row, label_set, path.parent, where, f"{path.stem}-{i}")
        if isinstance(c, str):
            issues.bad(where, c)
        else:
            out.append(c)
    return out


@register_loader("csv", None, "labels", "generic CSV: image,text,labels,split[,id]; labels ';'-separated")
def load_csv(
    root: Path,
    label_set: str,
    issues: Issues,
    min_count: int = 1,
    check_images: bool = True,
    encoding: str = DEFAULT_ENCODING,
    max_field_chars: int = MAX_FIELD_CHARS,
) -> Dataset:
    path = _find_file(root, (".csv",))
    cands = load_rows_csv(path, label_set, issues, encoding=encoding, max_field_chars=max_field_chars)
    return finalize("csv", label_set, cands, issues, check_images=check_images, min_count=min_count)


@register_loader("synthetic", None, "labels", "built-in synthetic scans (mcmfh prepare synthetic), generic CSV layout")
def load_synthetic(
    root: Path, label_set: str, issues: Issues, min_count: int = 1, check_images: bool = True
) -> Dataset:
    path = root / "synthetic.csv" if root.is_dir() else root
    if not path.is_file():
        raise DataError(f"{path}: not found; run `mcmfh prepare synthetic --out DIR` to generate it")
    cands = load_rows_csv(path, label_set, issues)
    return finalize("synthetic", label_set, cands, issues, check_images=check_images, min_count=min_count)


@register_loader("jsonl", None, "labels", "generic JSON Lines: one {image,text,labels,split[,id]} object per line")
def load_jsonl(
    root: Path,
    label_set: str,
    issues: Issues,
    min_count: int = 1,
    check_images: bool = True,
    encoding: str = DEFAULT_ENCODING,
) -> Dataset:
    path = _find_file(root, (".jsonl", ".ndjson"))
    cands = load_rows_jsonl(path, label_set, issues, encoding=encoding)
    return finalize("jsonl", label_set, cands, issues, check_images=check_images, min_count=min_count)
