"""ROCO (Pelka et al., MICCAI LABELS 2018), the official file layout.

``<root>/<split>/`` (or ``<root>/<split>/<subset>/`` with ``subset="radiology"|"non-radiology"``, the repository's own
nesting) holds tab-separated files whose first column is the ROCO id: ``captions.txt`` (id, caption), ``cuis.txt``
and ``semtypes.txt`` (id, then UMLS CUIs / semantic-type code+name pairs), ``dlinks.txt`` (id, ``wget <PMC archive
URL> ...``, image file name inside the archive), ``keywords.txt`` and ``licences.txt``. Splits ``train``,
``validation``, ``test`` map to train/dev/test.

- One record per caption; text = the caption.
- Label sets: ``semtypes`` (default) — UMLS semantic type names (e.g. ``Diagnostic Procedure``); ``cuis`` — UMLS
  concept ids. They differ a lot in density: two semantic types each cover about half the items, while CUIs are
  sparse, so mAP numbers are only comparable within one label set. Items with no semantic type (or no CUI) keep an
  empty label set.
- Images: ``<split folder>/images/<PMC id>_<file name>`` — the name the ROCO fetch script and ``mcmfh prepare roco``
  give them. Images not downloaded keep their records as text-only and are counted in ``report.missing_images``.
"""

from __future__ import annotations

from pathlib import Path

from mcmfh.data.build import Candidate, Issues, finalize, read_lines
from mcmfh.data.loader_spec import register_loader
from mcmfh.data.records import Dataset
from mcmfh.errors import DataError

SPLIT_DIRS = {"train": "train", "validation": "dev", "test": "test"}
LABEL_SETS = ("semtypes", "cuis")
IMAGES_DIR = "images"


def read_tsv(path: Path, issues: Issues, min_fields: int) -> dict[str, tuple[int, list[str]]]:
    """``id -> (line, other fields)`` of a ROCO tab-separated file; short rows and repeated ids are bad items."""
    out: dict[str, tuple[int, list[str]]] = {}
    lines = read_lines(path)
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        fields = raw.split("\t")
        rid = fields[0].strip()
        if len(fields) < min_fields or not rid:
            issues.bad(f"{path}:{i}", f"expected an id and at least {min_fields - 1} tab-separated field(s)")
        elif rid in out:
            issues.bad(f"{path}:{i}", f"duplicate id {rid!r} (first at line {out[rid][0]})")
        else:
            out[rid] = (i, fields[1:])
    return out


def parse_dlink(fields: list[str]) -> tuple[str, str] | None:
    """dlinks fields after the id -> (archive URL, image file name inside the archive's PMC folder)."""
    if len(fields) < 2:
        return None
    url = next((w for w in fields[0].split() if "://" in w), None)
    name = fields[-1].strip()
    if url is None or not url.endswith(".tar.gz") or not name:
        return None
    return url, name


def pmc_id(url: str) -> str:
    """``.../PMC4705725.tar.gz`` -> ``PMC4705725``."""
    return url.rsplit("/", 1)[-1].removesuffix(".tar.gz")


def image_file_name(url: str, name: str) -> str:
    return f"{pmc_id(url)}_{name}"


def split_folder(root: Path, split_dir: str, subset: str | None) -> Path:
    return root / split_dir / subset if subset else root / split_dir


def _labels(fields: list[str], label_set: str) -> tuple[str, ...]:
    vals = [f.strip() for f in fields if f.strip()]
    if label_set == "cuis":
        return tuple(dict.fromkeys(vals))
    # semtypes: code, name, code, name ... -> names (the codes are their ids; names are what a reader understands)
    return tuple(dict.fromkeys(vals[1::2]))


@register_loader("roco", LABEL_SETS, "semtypes", "ROCO figure captions with UMLS semantic types or CUIs")
def load_roco(
    root: Path,
    label_set: str,
    issues: Issues,
    subset: str | None = None,
    min_count: int = 1,
    check_images: bool = True,
) -> Dataset:
    cands: list[Candidate] = []
    found = [s for s in SPLIT_DIRS if (split_folder(root, s, subset) / "captions.txt").is_file()]
    if not found:
        where = f"{root}/<split>/{subset + '/' if subset else ''}captions.txt"
        raise DataError(f"{where}: not found for any split {list(SPLIT_DIRS)} (ROCO official layout expected)")
    for split_dir in found:
        folder = split_folder(root, split_dir, subset)
        captions = read_tsv(folder / "captions.txt", issues, 2)
        label_file = folder / f"{label_set}.txt"
        if not label_file.is_file():
            raise DataError(f"{label_file}: not found (label set {label_set!r})")
        labels = read_tsv(label_file, issues, 1)
        dlinks = read_tsv(folder / "dlinks.txt", issues, 3) if (folder / "dlinks.txt").is_file() else {}
        for rid, (line, fields) in captions.items():
            where = f"{folder / 'captions.txt'}:{line}"
            image, name = None, ""
            if rid in dlinks:
                link = parse_dlink(dlinks[rid][1])
                if link is None:
                    issues.bad(f"{folder / 'dlinks.txt'}:{dlinks[rid][0]}", "expected 'wget <url>.tar.gz ...' + name")
                    continue
                name = image_file_name(*link)
                image = folder / IMAGES_DIR / name
            lab = _labels(labels[rid][1], label_set) if rid in labels else ()
            text = " ".join(fields).strip()
            cands.append(Candidate(rid, image, text, lab, SPLIT_DIRS[split_dir], where, image_name=name))
    return finalize(
        "roco", label_set, cands, issues, missing_image="text_only", check_images=check_images, min_count=min_count
    )
