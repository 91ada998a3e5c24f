"""Small generated inputs for the data tests: images, DICOM files, Open-i and ROCO layouts, archives."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

PHI = {"PatientName": "Doe^Jane", "PatientID": "SECRET-4711", "PatientBirthDate": "19700101"}


def write_png(path: Path, size: tuple[int, int] = (16, 12), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path, format="PNG")
    return path


def png_bytes(size: tuple[int, int] = (8, 8), value: int = 100) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, format="PNG")
    return buf.getvalue()


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None,
    preamble: bool = True,
    **extra: object,
) -> Path:
    """A minimal valid DICOM (Secondary Capture) with patient identifiers in the header (to test they never leak)."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for k, v in PHI.items():
        setattr(ds, k, v)
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.add_new(0x00283006, "US", [int(v) for v in voi_lut])  # LUTData
        ds.VOILUTSequence = [item]
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=preamble)
    if not preamble:  # strip the 128-byte preamble + "DICM" + file meta: a bare dataset, as some archives hold
        from pydicom import dcmread

        bare = dcmread(path)
        bare.preamble = None
        bare.file_meta = FileMetaDataset()
        bare.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=False)
    return path


# --- Open-i --------------------------------------------------------------------------------------------------------

OPENI_STUDIES = [
    # uid, findings, impression, MeSH major terms, image stems
    ("1", "Heart size normal.", "No acute disease.", ["normal"], ["1_IM-0001-4001", "1_IM-0001-3001"]),
    ("2", "Borderline cardiomegaly.", "", ["Cardiomegaly/borderline", "Pulmonary Artery/enlarged"], ["2_IM-0652-1001"]),
    ("3", "", "Degenerative spine.", ["Thoracic Vertebrae/degenerative/mild", "No Indexing"], ["3_IM-1384-1001"]),
    ("4", "", "", ["normal"], ["4_IM-2050-1001"]),  # empty report -> bad item
    ("5", "Tortuous aorta.", "Stable.", ["Aorta, Thoracic/tortuous", "Cardiomegaly, mild"], []),  # no images
]


def write_openi_nlm(root: Path, studies=OPENI_STUDIES) -> Path:
    xml_dir = root / "ecgen-radiology"
    xml_dir.mkdir(parents=True, exist_ok=True)
    for uid, findings, impression, mesh, images in studies:
        majors = "".join(f"<major>{m}</major>" for m in mesh)
        parents = "".join(f'<parentImage id="CXR{s}"><caption>x</caption></parentImage>' for s in images)
        (xml_dir / f"{uid}.xml").write_text(
            f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="CXR{uid}"/><IUXRId id="{uid}"/>'
            f"<MedlineCitation><Article><Abstract>"
            f'<AbstractText Label="COMPARISON">None.</AbstractText>'
            f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
            f'<AbstractText Label="IMPRESSION">{impression}</AbstractText>'
            f"</Abstract></Article></MedlineCitation><MeSH>{majors}<automatic>x</automatic></MeSH>{parents}</eCitation>"
        )
    return root


def write_openi_kaggle(root: Path, studies=OPENI_STUDIES) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "indiana_reports.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"])
        for uid, findings, impression, mesh, _ in studies:
            w.writerow([uid, ";".join(mesh), "", "Xray Chest", "", "None.", findings, impression])
    with open(root / "indiana_projections.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "filename", "projection"])
        for uid, *_, images in studies:
            for k, s in enumerate(images):
                w.writerow([uid, f"{s}.dcm.png", "Lateral" if k else "Frontal"])
    return root


def write_openi_r2gen(root: Path, name: str = "annotation.json", studies=OPENI_STUDIES) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    keys = ["train", "train", "val", "test", "test"]
    data: dict[str, list] = {"train": [], "val": [], "test": []}
    for key, (uid, findings, impression, _, images) in zip(keys, studies, strict=True):
        report = " ".join(x for x in (findings, impression) if x)
        data[key].append({"id": uid, "report": report, "image_path": [f"CXR{s}.png" for s in images]})
    (root / name).write_text(json.dumps(data))
    return root


# --- ROCO ----------------------------------------------------------------------------------------------------------

ROCO_ITEMS = {
    "train": [
        ("ROCO_00001", "CT of the chest showing a nodule", "T060 Diagnostic Procedure T033 Finding",
         "C0040405 C0028259", "PMC100001", "gr1.jpg"),
        ("ROCO_00002", "Photograph of the wound", "T033 Finding", "C0043250", "PMC100001", "gr2.jpg"),
        ("ROCO_00003", "Schematic drawing", "", "", "PMC100002", "fig3.png"),
    ],
    "validation": [("ROCO_00004", "MRI of the knee", "T060 Diagnostic Procedure", "C0024485", "PMC100003", "f1.jpg")],
    "test": [("ROCO_00005", "X-ray of the hand", "T060 Diagnostic Procedure", "C0018563", "PMC100002", "fig4.png")],
}  # fmt: skip


def write_roco(
    root: Path, base_url: str = "ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package", items_by_split=ROCO_ITEMS
) -> Path:
    for split, items in items_by_split.items():
        d = root / split
        d.mkdir(parents=True, exist_ok=True)
        cap, sem, cui, dl, kw, lic = [], [], [], [], [], ["ROCO_ID,PMC_ID,CC"]
        for rid, caption, semtypes, cuis, pmc, name in items:
            s = semtypes.split()
            pairs = [(s[i], " ".join(_until_code(s[i + 1 :]))) for i in range(len(s)) if s[i].startswith("T0")]
            cap.append(f"{rid}\t {caption}")
            sem.append("\t".join([rid, ""] + [x for p in pairs for x in p]))
            cui.append("\t".join([rid, ""] + cuis.split()))
            dl.append(f"{rid}\twget -r {base_url}/ab/cd/{pmc}.tar.gz -P /path/to/Dir\t{name}")
            kw.append(f"{rid}\t\t{caption.split()[0].lower()}")
            lic.append(f"{rid},{pmc}_{name},CC BY")
        for fname, lines in [("captions", cap), ("semtypes", sem), ("cuis", cui), ("dlinks", dl), ("keywords", kw),
                             ("licences", lic)]:  # fmt: skip
            (d / f"{fname}.txt").write_text("\n".join(lines) + "\n")
    return root


def _until_code(words: list[str]) -> list[str]:
    out = []
    for w in words:
        if w.startswith("T0"):
            break
        out.append(w)
    return out


def pmc_archive(pmc: str, members: dict[str, bytes]) -> bytes:
    """A PMC OA package: ``<PMCID>/`` folder with the article's files, gzipped tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in {f"{pmc}.nxml": b"<article/>", **members}.items():
            info = tarfile.TarInfo(f"{pmc}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- Open-i and ROCO layouts with images, from the built-in synthetic dataset (learnable label structure) ----------


def _synthetic_rows(tmp: Path, n: int, seed: int) -> list[dict[str, str]]:
    """The synthetic dataset's CSV rows (id, image path, caption, region/finding labels, split) and its PNGs."""
    from mcmfh.data.synthetic import CSV_NAME, make_synthetic_dataset

    folder = make_synthetic_dataset(tmp, n=n, seed=seed)
    with open(folder / CSV_NAME, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["image"] = str(folder / r["image"])
        r["region"], r["finding"] = (lab.split(":", 1)[1] for lab in r["labels"].split(";"))
    return rows


def write_openi_with_images(root: Path, n: int = 120, seed: int = 0) -> Path:
    """An NLM-layout Open-i folder: one study per synthetic item (MeSH majors = region and finding, report = its
    caption, one PNG under NLMCXR_png/), plus one study with an empty report (a bad item for ``skip_bad``)."""
    rows = _synthetic_rows(root.parent / f".{root.name}-synthetic", n, seed)
    studies = [("9999", "", "", ["normal"], ["9999_IM-0001-1001"])]
    for i, r in enumerate(rows, 1):
        stem = f"{i}_IM-{i:04d}-1001"
        studies.append((str(i), r["text"], "", [r["region"].capitalize(), r["finding"].capitalize()], [stem]))
        (root / "NLMCXR_png").mkdir(parents=True, exist_ok=True)
        (root / "NLMCXR_png" / f"CXR{stem}.png").write_bytes(Path(r["image"]).read_bytes())
    write_png(root / "NLMCXR_png" / "CXR9999_IM-0001-1001.png")
    return write_openi_nlm(root, studies)


def write_roco_with_images(root: Path, n: int = 120, seed: int = 0) -> Path:
    """A ROCO-layout folder: one caption per synthetic item, semantic types = region and finding, its PNG at
    ``<split>/images/<PMC id>_<name>`` (the name ``mcmfh prepare roco`` gives), splits from the synthetic data."""
    rows = _synthetic_rows(root.parent / f".{root.name}-synthetic", n, seed)
    folder_of = {"train": "train", "dev": "validation", "test": "test"}
    items: dict[str, list[tuple[str, ...]]] = {s: [] for s in folder_of.values()}
    for i, r in enumerate(rows):
        split, pmc, name = folder_of[r["split"]], f"PMC{200000 + i}", f"fig{i}.png"
        semtypes = f"T001 {r['region']} T002 {r['finding']}"
        items[split].append((f"ROCO_{i:05d}", r["text"], semtypes, "C0000001", pmc, name))
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "images" / f"{pmc}_{name}").write_bytes(Path(r["image"]).read_bytes())
    return write_roco(root, items_by_split=items)


def tiny_archive(root: Path, n: int = 48, seed: int = 0) -> dict:
    """Synthetic images + captions -> tiny-encoder features -> a 16-bit CCA-ITQ run -> an archive of train+dev under
    ``root``; returns the pieces (data folder, dataset, features, run, archive folder ``idx``)."""
    from mcmfh.archive import Archive
    from mcmfh.data import load_dataset
    from mcmfh.data.synthetic import make_synthetic_dataset
    from mcmfh.encode_features import encode_dataset
    from mcmfh.encoders import get_encoder
    from mcmfh.training.runs import train_run

    data = make_synthetic_dataset(root / "syn", n=n, seed=seed)
    ds = load_dataset("csv", data)
    fs = encode_dataset(ds, get_encoder("tiny"), root / "features")
    run = train_run(root / "features", "cca-itq", 16, 0, root / "run")
    Archive.build(run, fs, root / "idx").close()
    return {"data": data, "ds": ds, "fs": fs, "run": run, "idx": root / "idx"}
