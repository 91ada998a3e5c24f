"""MedPix 2.0 repository (CHILab1/MedPix-2.0) -> the ``medpix2.csv`` + ``images/`` layout the ``medpix2`` loader reads.

Inputs, found by file name anywhere in the repository archive or checkout: ``Descriptions.json`` (or
``Description.json``; one entry per image: Type, U_id, image, Description{Caption, Modality, Plane, ACR Codes, Age,
Sex}, Location, Location Category), ``Case_topic.json`` (one entry per case: Case{Title, History, Findings,
Case Diagnosis}, Topic{Category, ...}), ``splitted_dataset/uid_list.json`` (case ids per split: train [also train_1,
train_2], dev, test) and ``images/<image>.png``.

Each image becomes one row: ``text`` = its caption (whitespace collapsed), ``labels`` = ``loc:<Location>;cat:<Topic
Category>``, ``labels_coarse`` = ``type:<CT|MR>;loccat:<Location Category>``, ``split`` from the case's list. Images
whose case is in no split list, or whose PNG is missing from the repository, are left out and counted in the summary.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path, PurePosixPath

from mcmfh.data.download import DOWNLOADS, DownloadConfig, download, url_join
from mcmfh.data.tarzip import iter_members
from mcmfh.errors import DataError
from mcmfh.io import atomic_dir, atomic_write_text

REPO_ARCHIVE_BASE = "https://github.com/CHILab1/MedPix-2.0/archive/"
DEFAULT_REF = "d3bc431576ec8041114806ec3eb58d75adf45029"
COLUMNS = (
    "id", "image", "text", "labels", "labels_coarse", "case_id", "split", "type", "modality", "plane", "location",
    "location_category", "topic_category", "acr_code", "case_title", "case_diagnosis", "case_findings", "history",
    "age", "sex",
)  # fmt: skip
SPLIT_KEYS = {"train": "train", "train_1": "train", "train_2": "train", "dev": "dev", "test": "test"}
JSON_NAMES = {
    "Descriptions.json": "desc",
    "Description.json": "desc",
    "Case_topic.json": "cases",
    "uid_list.json": "splits",
}


def _one_line(s: object) -> str:
    return " ".join(str(s or "").split())


def _tags(*pairs: tuple[str, object]) -> str:
    return ";".join(f"{k}:{_one_line(v)}" for k, v in pairs if _one_line(v))


def _read_sources(src: Path) -> tuple[dict[str, object], dict[str, Path | PurePosixPath]]:
    """The three JSON documents and the PNGs by image id (a file in a checkout, or a member of the archive)."""
    docs: dict[str, object] = {}
    pngs: dict[str, Path | PurePosixPath] = {}
    if src.is_dir():
        for p in src.rglob("*"):
            if p.name in JSON_NAMES and JSON_NAMES[p.name] not in docs:
                docs[JSON_NAMES[p.name]] = _load_json(p.read_bytes(), p)
            elif p.suffix.lower() == ".png" and p.parent.name == "images":
                pngs[p.stem] = p
    else:
        for member, opener in iter_members(src):
            if member.name in JSON_NAMES and JSON_NAMES[member.name] not in docs:
                with opener() as f:
                    docs[JSON_NAMES[member.name]] = _load_json(f.read(), src / str(member))
            elif member.suffix.lower() == ".png" and member.parent.name == "images":
                pngs[member.stem] = member
    missing = sorted({"Descriptions.json": "desc", "Case_topic.json": "cases", "uid_list.json": "splits"}.items())
    lacking = [name for name, key in missing if key not in docs]
    if lacking:
        raise DataError(f"{src}: MedPix 2.0 file(s) {lacking} not found (is this the CHILab1/MedPix-2.0 repository?)")
    return docs, pngs


def _load_json(data: bytes, where: Path) -> object:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{where}: not valid JSON ({e})") from None


def _rows(docs: dict[str, object], pngs: dict) -> tuple[list[dict[str, str]], dict[str, int]]:
    split_of: dict[str, str] = {}
    for key, ids in dict(docs["splits"]).items():  # type: ignore[arg-type]
        if key in SPLIT_KEYS:
            for uid in ids:
                split_of.setdefault(str(uid), SPLIT_KEYS[key])
    cases = {str(c.get("U_id")): c for c in docs["cases"]}  # type: ignore[union-attr]
    rows, dropped = [], {"no_split": 0, "no_image": 0}
    for d in docs["desc"]:  # type: ignore[union-attr]
        uid, image = str(d.get("U_id", "")), str(d.get("image", ""))
        if uid not in split_of:
            dropped["no_split"] += 1
            continue
        if image not in pngs:
            dropped["no_image"] += 1
            continue
        desc, case = d.get("Description") or {}, cases.get(uid, {})
        topic, info = case.get("Topic") or {}, case.get("Case") or {}
        location = d.get("Location") or topic.get("Location")
        loc_cat = d.get("Location Category") or topic.get("Location Category")
        row = {
            "id": image,
            "image": f"images/{image}.png",
            "text": _one_line(desc.get("Caption")),
            "labels": _tags(("loc", location), ("cat", topic.get("Category"))),
            "labels_coarse": _tags(("type", d.get("Type")), ("loccat", loc_cat)),
            "case_id": uid,
            "split": split_of[uid],
            "type": _one_line(d.get("Type")),
            "modality": _one_line(desc.get("Modality")),
            "plane": _one_line(desc.get("Plane")),
            "location": _one_line(location),
            "location_category": _one_line(loc_cat),
            "topic_category": _one_line(topic.get("Category")),
            "acr_code": _one_line(desc.get("ACR Codes")),
            "case_title": _one_line(info.get("Title")),
            "case_diagnosis": _one_line(info.get("Case Diagnosis")),
            "case_findings": _one_line(info.get("Findings")),
            "history": _one_line(info.get("History")),
            "age": _one_line(desc.get("Age")),
            "sex": _one_line(desc.get("Sex")),
        }
        rows.append(row)
    return rows, dropped


def _write_images(rows: list[dict[str, str]], pngs: dict, src: Path, images_dir: Path) -> None:
    if images_dir.is_dir():
        return
    wanted = {r["id"] for r in rows}
    with atomic_dir(images_dir) as tmp:
        if src.is_dir():
            for name in wanted:
                shutil.copyfile(pngs[name], tmp / f"{name}.png")
            return
        for path, opener in iter_members(src):  # one pass over the archive instead of one per image
            if path.suffix.lower() == ".png" and path.parent.name == "images" and path.stem in wanted:
                with opener() as f, open(tmp / f"{path.stem}.png", "wb") as out:
                    shutil.copyfileobj(f, out)


def prepare_medpix2(
    out: Path,
    base_url: str | None,
    source: Path | None,
    checksums: dict[str, str] | None,
    cfg: DownloadConfig,
    ref: str = DEFAULT_REF,
) -> dict[str, object]:
    """Download the repository archive at ``ref`` (unless ``source``) and convert it; see the module docstring."""
    if source is None:
        name = f"{ref}.zip"
        source = download(url_join(base_url or REPO_ARCHIVE_BASE, name), out / DOWNLOADS / f"MedPix-2.0-{name}",
                          (checksums or {}).get(name), cfg)  # fmt: skip
    docs, pngs = _read_sources(source)
    rows, dropped = _rows(docs, pngs)
    if not rows:
        raise DataError(f"{source}: no MedPix 2.0 image has both a split and a PNG")
    _write_images(rows, pngs, source, out / "images")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "medpix2.csv", buf.getvalue())  # last: its presence means the layout is complete
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "dev", "test")}
    return {"items": len(rows), "splits": counts, "dropped": dropped, "ref": ref}
