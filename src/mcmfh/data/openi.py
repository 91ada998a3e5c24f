"""Open-i / Indiana University chest X-ray collection (Demner-Fushman et al., JAMIA 2016), three real layouts.

``layout`` (default ``auto``: the first present in this order):
- ``nlm``: the official NLM distribution — ``ecgen-radiology/*.xml`` (one report per study, from
  ``NLMCXR_reports.tgz``), images ``<parentImage id>.png`` from ``NLMCXR_png.tgz``;
- ``kaggle``: ``indiana_reports.csv`` (uid, MeSH, Problems, findings, impression, ...) +
  ``indiana_projections.csv`` (uid, filename, projection);
- ``r2gen``: ``annotation.json`` (or ``annotation_mrg_rl.json``) ``{"train"|"val"|"test": [{id, report,
  image_path: [...]}]}``.

Choices (documented, tested):
- **Text** = findings + impression, joined by a space (the R2Gen ``report`` already is that). An empty section is
  left out; a report whose findings *and* impression are empty is a bad item (nothing to retrieve by).
- **Unit**: ``unit="image"`` (default) gives one record per image, ids = image name without extension; all images of a
  study share its text, labels and split. ``unit="study"`` gives one record per study with its first image (Kaggle:
  the first ``Frontal`` projection). A study listing no image at all gives one text-only record, id ``CXR<uid>``.
- **Labels**: MeSH major terms normalised by ``mcmfh.data.openi_labels`` (label sets ``mesh``, ``mesh_terms``) with the
  ``min_count`` cut. The R2Gen file has no tags: its labels come from the reports of a Kaggle CSV or NLM XML folder in
  the same root (joined on the study id) when present (``join_tags=True``), and are empty otherwise.
- **Splits**: R2Gen's own train/val/test (val -> dev). Other layouts: ``hash_split(study id, seed)`` 80/10/10 by study,
  so the images of one study never cross splits.
- **Images** are looked up under ``image_dir`` (default: ``NLMCXR_png/``, ``images/`` under the root), by relative path
  first, then by normalised file name (so Kaggle ``1_IM-0001-4001.dcm.png`` and NLM ``CXR1_IM-...png`` names match
  their files in either distribution). Images not on disk keep their records as text-only and are counted in
  ``report.missing_images``.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from mcmfh.data.build import Candidate, Issues, finalize, hash_split, read_csv_rows
from mcmfh.data.loader_spec import register_loader
from mcmfh.data.openi_labels import LABEL_SETS, normalise_terms, split_terms
from mcmfh.data.records import Dataset
from mcmfh.errors import DataError

LAYOUTS = ("nlm", "kaggle", "r2gen")
XML_DIR = "ecgen-radiology"
KAGGLE_REPORTS, KAGGLE_PROJECTIONS = "indiana_reports.csv", "indiana_projections.csv"
R2GEN_NAMES = ("annotation.json", "annotation_mrg_rl.json")
DEFAULT_IMAGE_DIRS = ("NLMCXR_png", "images")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
R2GEN_SPLITS = {"train": "train", "val": "dev", "test": "test"}


@dataclass
class Study:
    uid: str
    text: str
    terms: list[str]
    images: list[str]  # names as the source writes them
    where: str
    split: str | None = None
    frontal: list[bool] = field(default_factory=list)


def join_text(*sections: str | None) -> str:
    return " ".join(s.strip() for s in sections if s and s.strip())


# --- layouts -------------------------------------------------------------------------------------------------------


def _read_nlm(folder: Path, issues: Issues) -> list[Study]:
    studies = []
    for path in sorted(folder.glob("*.xml")):
        try:
            doc = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as e:
            issues.bad(str(path), f"unreadable report XML ({e})")
            continue
        node = doc.find("IUXRId")
        uid = node.get("id", "").strip() if node is not None else ""
        uid = uid or path.stem
        sections = {(a.get("Label") or "").upper(): a.text or "" for a in doc.iter("AbstractText")}
        terms = [m.text or "" for m in doc.findall("MeSH/major")]
        images = [f"{p.get('id')}.png" for p in doc.iter("parentImage") if p.get("id")]
        text = join_text(sections.get("FINDINGS"), sections.get("IMPRESSION"))
        studies.append(Study(uid, text, terms, images, str(path)))
    if not studies:
        raise DataError(f"{folder}: no report XML files (expected ecgen-radiology/*.xml from NLMCXR_reports.tgz)")
    return studies


def _read_kaggle(root: Path, issues: Issues) -> list[Study]:
    reports, projections = root / KAGGLE_REPORTS, root / KAGGLE_PROJECTIONS
    for p in (reports, projections):
        if not p.is_file():
            raise DataError(f"{p}: not found (the Kaggle layout needs {KAGGLE_REPORTS} and {KAGGLE_PROJECTIONS})")
    by_uid: dict[str, Study] = {}
    for line, row in read_csv_rows(reports, ("uid", "MeSH", "findings", "impression"), issues):
        uid = row["uid"].strip()
        where = f"{reports}:{line}"
        if uid in by_uid:
            issues.bad(where, f"duplicate uid {uid!r} (first at {by_uid[uid].where})")
            continue
        text = join_text(row["findings"], row["impression"])
        by_uid[uid] = Study(uid, text, split_terms(row["MeSH"]), [], where)
    for line, row in read_csv_rows(projections, ("uid", "filename", "projection"), issues):
        study = by_uid.get(row["uid"].strip())
        if study is None:
            issues.bad(f"{projections}:{line}", f"image for unknown uid {row['uid']!r} (not in {KAGGLE_REPORTS})")
            continue
        study.images.append(row["filename"].strip())
        study.frontal.append(row["projection"].strip().lower() == "frontal")
    return list(by_uid.values())


def _read_r2gen(path: Path, issues: Issues) -> list[Study]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable R2Gen annotation JSON ({e})") from None
    if not isinstance(data, dict) or not set(data) & set(R2GEN_SPLITS):
        raise DataError(f"{path}: expected an object with keys {list(R2GEN_SPLITS)}")
    studies = []
    for key, items in data.items():
        if key not in R2GEN_SPLITS:
            issues.bad(f"{path}:{key}", f"unknown split {key!r} (expected one of {list(R2GEN_SPLITS)})")
            continue
        for i, item in enumerate(items):
            where = f"{path}:{key}[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get("image_path", []), list):
                issues.bad(where, "expected {id, report, image_path: [...]}")
                continue
            uid = str(item.get("id", "")).strip()
            text = join_text(str(item.get("report") or ""))
            images = [str(p) for p in item.get("image_path", [])]
            studies.append(Study(uid, text, [], images, where, split=R2GEN_SPLITS[key]))
    return studies


def _detect(root: Path, layout: str) -> tuple[str, Path]:
    if root.is_file():
        if root.name == KAGGLE_REPORTS:
            return "kaggle", root.parent
        if root.suffix == ".json":
            return "r2gen", root
        raise DataError(f"{root}: not an Open-i file (expected {KAGGLE_REPORTS} or an R2Gen annotation .json)")
    found = {}
    if (root / XML_DIR).is_dir():
        found["nlm"] = root / XML_DIR
    if (root / KAGGLE_REPORTS).is_file():
        found["kaggle"] = root
    for n in R2GEN_NAMES:
        if (root / n).is_file():
            found["r2gen"] = root / n
            break
    if layout == "auto":
        for name in LAYOUTS:
            if name in found:
                return name, found[name]
        raise DataError(
            f"{root}: no Open-i layout found; expected {XML_DIR}/ (NLM), {KAGGLE_REPORTS} + {KAGGLE_PROJECTIONS} "
            f"(Kaggle) or {' / '.join(R2GEN_NAMES)} (R2Gen)"
        )
    if layout not in LAYOUTS:
        raise DataError(f"openi: unknown layout {layout!r}; expected 'auto' or one of {list(LAYOUTS)}")
    if layout not in found:
        raise DataError(f"{root}: layout {layout!r} requested but its files are not there")
    return layout, found[layout]


def _tags_beside(root: Path, issues: Issues) -> dict[str, list[str]]:
    """MeSH terms by study id from a Kaggle CSV or NLM XML folder next to an R2Gen file (empty if neither)."""
    scratch = Issues("openi", skip_bad=True)  # problems in the side file do not make R2Gen items bad
    if (root / XML_DIR).is_dir():
        return {s.uid: s.terms for s in _read_nlm(root / XML_DIR, scratch)}
    if (root / KAGGLE_REPORTS).is_file() and (root / KAGGLE_PROJECTIONS).is_file():
        return {s.uid: s.terms for s in _read_kaggle(root, scratch)}
    return {}


# --- images --------------------------------------------------------------------------------------------------------


def strip_image_suffixes(name: str) -> str:
    """``1_IM-0001-4001.dcm.png`` -> ``1_IM-0001-4001`` (every trailing image extension, case kept)."""
    changed = True
    while changed:
        changed = False
        for s in IMAGE_SUFFIXES:
            if name.lower().endswith(s):
                name, changed = name[: -len(s)], True
    return name


def image_key(name: str) -> str:
    """Normalised file name: no folders, no image extensions (also ``.dcm.png``), no ``CXR`` prefix, lowercase."""
    base = strip_image_suffixes(os.path.basename(name.replace("\\", "/"))).lower()
    return base[3:] if base.startswith("cxr") else base


class ImageIndex:
    """Finds image files under a few folders, by relative path, then by ``image_key``; the folders are walked once."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = [d for d in dirs if d.is_dir()]
        self._by_key: dict[str, Path] = {}
        for d in self.dirs:
            for dirpath, _, files in os.walk(d):
                for f in files:
                    if f.lower().endswith(IMAGE_SUFFIXES):
                        self._by_key.setdefault(image_key(f), Path(dirpath) / f)

    def find(self, name: str) -> Path | None:
        for d in self.dirs:
            p = d / name
            if p.is_file():
                return p
        return self._by_key.get(image_key(name))


# --- loader --------------------------------------------------------------------------------------------------------


def _candidates(
    studies: list[Study], index: ImageIndex, base: Path, unit: str, label_set: str, split_of
) -> list[Candidate]:
    out = []
    for s in studies:
        labels = normalise_terms(s.terms, label_set)
        split = s.split or split_of(s.uid)
        names = s.images
        if unit == "study" and names:
            first = next((n for n, f in zip(names, s.frontal, strict=False) if f), names[0])
            names = [first]
        if not names:
            out.append(Candidate(f"CXR{s.uid}", None, s.text, labels, split, s.where, study=f"CXR{s.uid}"))
            continue
        for name in names:
            # A not-found image keeps a path that does not exist, so finalize reports it as missing (text-only).
            path = index.find(name) or (index.dirs[0] if index.dirs else base) / name
            rid = strip_image_suffixes(name) if unit == "image" else f"CXR{s.uid}"
            out.append(Candidate(rid, path, s.text, labels, split, s.where, image_name=name, study=f"CXR{s.uid}"))
    return out


@register_loader("openi", LABEL_SETS, "mesh", "Open-i IU chest X-ray reports (NLM XML, Kaggle CSV or R2Gen JSON)")
def load_openi(
    root: Path,
    label_set: str,
    issues: Issues,
    layout: str = "auto",
    unit: str = "image",
    min_count: int = 1,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    image_dir: str | None = None,
    join_tags: bool = True,
    check_images: bool = True,
) -> Dataset:
    if unit not in ("image", "study"):
        raise DataError(f"openi: unknown unit {unit!r}; expected 'image' or 'study'")
    layout, src = _detect(root, layout)
    base = root if root.is_dir() else root.parent
    if layout == "nlm":
        studies = _read_nlm(src, issues)
    elif layout == "kaggle":
        studies = _read_kaggle(src, issues)
    else:
        studies = _read_r2gen(src, issues)
        tags = _tags_beside(base, issues) if join_tags else {}
        for s in studies:
            s.terms = tags.get(s.uid, [])
    kept = []
    for s in studies:
        if not s.uid:
            issues.bad(s.where, "empty study id")
        elif not s.text:
            issues.bad(s.where, f"study {s.uid}: empty report (findings and impression both empty)")
        else:
            kept.append(s)
    dirs = [Path(image_dir) if Path(image_dir).is_absolute() else base / image_dir] if image_dir else []
    index = ImageIndex(dirs or [base / d for d in DEFAULT_IMAGE_DIRS])
    if image_dir and not index.dirs:
        raise DataError(f"{dirs[0]}: image folder not found")
    cands = _candidates(kept, index, base, unit, label_set, lambda uid: hash_split(uid, seed, tuple(split_fractions)))
    return finalize(
        "openi", label_set, cands, issues, missing_image="text_only", check_images=check_images, min_count=min_count
    )
