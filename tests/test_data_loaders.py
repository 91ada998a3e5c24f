"""Loaders: generic CSV/JSONL with bad rows, MedPix 2.0, the three Open-i layouts, ROCO, and the real files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_fixtures import write_openi_kaggle, write_openi_nlm, write_openi_r2gen, write_png, write_roco
from mcmfh.data import available_datasets, load_dataset
from mcmfh.data.build import hash_split
from mcmfh.data.openi_labels import normalise_terms
from mcmfh.errors import DataError, MCMFHError

HEADER = "id,image,text,labels,split\n"


def _csv(tmp_path, body: str, header: str = HEADER):
    write_png(tmp_path / "img" / "a.png")
    write_png(tmp_path / "img" / "b.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    p = tmp_path / "archive.csv"
    p.write_text(header + body)
    return p


GOOD = (
    "r1,img/a.png,Round lesion in the left lobe,region:chest;finding:lesion,train\n"
    "r2,img/b.png,Normal,region:chest,test\n"
)


def test_registry_lists_every_loader_and_rejects_unknown_names_and_options(tmp_path):
    assert {"medpix2", "openi", "roco", "csv", "jsonl"} <= set(available_datasets())
    with pytest.raises(MCMFHError, match="unknown dataset"):
        load_dataset("nope", tmp_path)
    p = _csv(tmp_path, GOOD)
    with pytest.raises(MCMFHError, match="unknown option"):
        load_dataset("csv", p, colour="red")
    with pytest.raises(DataError, match="not found"):
        load_dataset("csv", tmp_path / "absent.csv")


def test_generic_csv_good_rows(tmp_path):
    ds = load_dataset("csv", _csv(tmp_path, GOOD))
    assert [r.id for r in ds.records] == ["r1", "r2"]
    assert ds.records[0].image == tmp_path / "img" / "a.png"
    assert ds.records[0].labels == ("region:chest", "finding:lesion")
    assert ds.label_vocab == ["finding:lesion", "region:chest"]
    assert ds.label_matrix().tolist() == [[1, 1], [0, 1]]
    assert ds.split_counts() == {"train": 1, "dev": 0, "test": 1}


def test_generic_csv_bad_rows_error_lists_file_and_line(tmp_path):
    body = (
        GOOD
        + "r3,img/missing.png,Text,tag,train\n"  # line 4: missing image
        + "r4,img/a.png,   ,tag,train\n"  # line 5: empty text
        + "r1,img/a.png,Dup,tag,dev\n"  # line 6: duplicate id
        + "r5,img/a.png,Text,tag,validation\n"  # line 7: unknown split
        + 'r6,img/a.png,"multi\nline text",tag,dev\n'  # lines 8-9: fine
        + "r7,img/a.png,Too,many,fields,here\n"  # line 10: wrong field count
        + "r8,img/broken.png,Text,tag,dev\n"  # line 11: corrupt image header
        + "r9,,Report without image,tag,dev\n"  # line 12: text-only, fine
    )
    p = _csv(tmp_path, body)
    with pytest.raises(DataError) as e:
        load_dataset("csv", p)
    msg = str(e.value)
    assert "6 bad item(s)" in msg and f"{p}:4" in msg and "image file not found" in msg
    ds = load_dataset("csv", p, skip_bad=True)
    assert [r.id for r in ds.records] == ["r1", "r2", "r6", "r9"]
    assert ds.records[2].text == "multi\nline text" and ds.records[3].image is None
    where = {w: why for w, why in ds.report.skipped}
    assert set(where) == {f"{p}:{n}" for n in (4, 5, 6, 7, 10, 11)} | {f"{p}:4"}
    assert "empty text" in where[f"{p}:5"]
    assert "duplicate id 'r1'" in where[f"{p}:6"]
    assert "unknown split 'validation'" in where[f"{p}:7"]
    assert "expected 5 fields, found 6" in where[f"{p}:10"]
    assert "broken.png" in where[f"{p}:11"]


def test_generic_csv_missing_columns_and_unknown_label_column(tmp_path):
    p = _csv(tmp_path, "img/a.png,Text,train\n", header="image,text,split\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['labels'\]"):
        load_dataset("csv", p, skip_bad=True)
    p = _csv(tmp_path, GOOD)
    with pytest.raises(DataError, match=r"missing column\(s\) \['organ'\]"):
        load_dataset("csv", p, label_set="organ")


def test_generic_csv_without_id_column_and_min_count(tmp_path):
    p = _csv(tmp_path, "img/a.png,A,x;y,train\nimg/b.png,B,x,dev\n", header="image,text,labels,split\n")
    ds = load_dataset("csv", p, min_count=2)
    assert [r.id for r in ds.records] == ["archive-2", "archive-3"]
    assert ds.label_vocab == ["x"] and ds.records[0].labels == ("x",)


def test_generic_jsonl(tmp_path):
    write_png(tmp_path / "a.png")
    lines = [
        {"id": "a", "image": "a.png", "text": "Lesion", "labels": ["x", "y"], "split": "train", "title": "Abscess"},
        {"id": "b", "image": "a.png", "text": "Cyst", "labels": "y;z", "split": "dev"},
        {"id": "e", "image": "a.png", "text": "Odd", "labels": [], "split": "dev", "title": 3},
        "not json",
        {"id": "c", "image": "a.png", "text": "No split", "labels": []},
        {"id": "d", "image": "a.png", "text": 5, "labels": [], "split": "dev"},
    ]
    p = tmp_path / "items.jsonl"
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    with pytest.raises(DataError, match="4 bad item"):
        load_dataset("jsonl", tmp_path)
    ds = load_dataset("jsonl", tmp_path, skip_bad=True)
    assert [r.labels for r in ds.records] == [("x", "y"), ("y", "z")]
    assert [r.title for r in ds.records] == ["Abscess", None]  # the optional case title (issue 25)
    assert [w for w, _ in ds.report.skipped] == [f"{p}:3", f"{p}:4", f"{p}:5", f"{p}:6"]
    assert "'title' must be a string" in ds.report.skipped[0][1]


def test_medpix2_layout_and_label_sets(tmp_path):
    write_png(tmp_path / "images" / "MPX1_synpic1.png")
    write_png(tmp_path / "images" / "MPX2_synpic2.png")
    (tmp_path / "medpix2.csv").write_text(
        "id,image,text,labels,labels_coarse,case_id,split,case_title,case_diagnosis\n"
        "MPX1_synpic1,images/MPX1_synpic1.png,Mass in the liver.,loc:Abdomen;cat:Neoplasm,"
        "type:CT;loccat:Abdomen,MPX1,train,Liver mass,Hepatocellular carcinoma\n"
        "MPX2_synpic2,images/MPX2_synpic2.png,Brain bleed.,loc:Brain;cat:Trauma,type:MR;loccat:Head,MPX2,test,,\n"
    )
    ds = load_dataset("medpix2", tmp_path)
    assert ds.label_set == "labels" and ds.records[0].labels == ("loc:Abdomen", "cat:Neoplasm")
    assert [r.title for r in ds.records] == ["Hepatocellular carcinoma", None]  # the case diagnosis
    coarse = load_dataset("medpix2", tmp_path, label_set="labels_coarse")
    assert coarse.records[1].labels == ("type:MR", "loccat:Head")
    with pytest.raises(DataError, match="unknown label set"):
        load_dataset("medpix2", tmp_path, label_set="organ")
    with pytest.raises(DataError, match="mcmfh prepare medpix2"):
        load_dataset("medpix2", tmp_path / "images")


# --- Open-i ---------------------------------------------------------------------------------------------------------


def test_openi_label_rule():
    terms = ["Thoracic Vertebrae/degenerative/mild", "Cardiomegaly, mild", "Aorta, Thoracic/tortuous", "No Indexing"]
    assert normalise_terms(terms + ["normal"]) == ("thoracic vertebrae", "cardiomegaly", "aorta, thoracic", "normal")
    assert normalise_terms(["Opacity/lung/base/left"], "mesh_terms") == ("opacity", "lung")
    assert normalise_terms(["Lung/hypoinflation/mild"], "mesh_terms") == ("lung", "hypoinflation")


def test_hash_split_is_deterministic_and_seeded():
    keys = [str(i) for i in range(2000)]
    a = [hash_split(k, seed=0) for k in keys]
    assert a == [hash_split(k, seed=0) for k in keys]
    assert a != [hash_split(k, seed=1) for k in keys]
    frac = {s: a.count(s) / len(a) for s in ("train", "dev", "test")}
    assert abs(frac["train"] - 0.8) < 0.03 and abs(frac["dev"] - 0.1) < 0.02


def _check_openi(ds, expect_images: bool):
    by_study = {r.text: r for r in ds.records}
    assert "Heart size normal. No acute disease." in by_study  # findings + impression
    assert "Borderline cardiomegaly." in by_study and "Degenerative spine." in by_study  # one section empty
    assert by_study["Borderline cardiomegaly."].labels == ("cardiomegaly", "pulmonary artery")
    assert by_study["Degenerative spine."].labels == ("thoracic vertebrae",)
    assert ds.report.skipped and "empty report" in ds.report.skipped[0][1]
    images = [r for r in ds.records if r.image is not None]
    assert bool(images) == expect_images


@pytest.mark.parametrize("layout", ["nlm", "kaggle"])
def test_openi_nlm_and_kaggle_with_and_without_images(tmp_path, layout):
    (write_openi_nlm if layout == "nlm" else write_openi_kaggle)(tmp_path)
    with pytest.raises(DataError, match="empty report"):
        load_dataset("openi", tmp_path)
    ds = load_dataset("openi", tmp_path, skip_bad=True)
    _check_openi(ds, expect_images=False)
    assert len(ds) == 5 and len(ds.report.missing_images) == 4  # study 5 lists no image -> one text-only record
    assert "CXR5" in {r.id for r in ds.records}
    # Images on disk, in the official NLMCXR_png naming; found from either layout's names.
    for stem in ("1_IM-0001-4001", "1_IM-0001-3001", "2_IM-0652-1001"):
        write_png(tmp_path / "NLMCXR_png" / f"CXR{stem}.png")
    ds = load_dataset("openi", tmp_path, skip_bad=True)
    _check_openi(ds, expect_images=True)
    assert len(ds.report.missing_images) == 1 and "3_IM-1384-1001" in ds.report.missing_images[0]
    studies = load_dataset("openi", tmp_path, skip_bad=True, unit="study")
    assert len(studies) == 4
    first = next(r for r in studies.records if r.id == "CXR1")
    assert first.image is not None and (layout == "nlm" or first.image.name == "CXR1_IM-0001-4001.png")  # Frontal
    # Splits are by study: every image of a study shares its split.
    splits = {r.text: r.split for r in ds.records}
    assert all(r.split == splits[r.text] for r in ds.records)


def test_openi_r2gen_splits_and_joined_tags(tmp_path):
    write_openi_r2gen(tmp_path, "annotation_mrg_rl.json")
    ds = load_dataset("openi", tmp_path, skip_bad=True)
    assert {r.split for r in ds.records} == {"train", "dev", "test"}
    assert all(r.labels == () for r in ds.records) and ds.label_vocab == []
    assert len(ds.report.missing_images) == len(ds) - 1  # study 5 has no image: text-only, not "missing"
    write_openi_kaggle(tmp_path)
    joined = load_dataset("openi", tmp_path, layout="r2gen", skip_bad=True)
    labels = {r.id: r.labels for r in joined.records}
    assert labels["CXR2_IM-0652-1001"] == ("cardiomegaly", "pulmonary artery")
    assert load_dataset("openi", tmp_path, layout="kaggle", skip_bad=True).name == "openi"
    with pytest.raises(DataError, match="layout 'nlm' requested"):
        load_dataset("openi", tmp_path, layout="nlm")


def test_openi_bad_layouts(tmp_path):
    with pytest.raises(DataError, match="no Open-i layout"):
        load_dataset("openi", tmp_path)
    (tmp_path / "annotation.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="expected an object"):
        load_dataset("openi", tmp_path)


# --- ROCO -----------------------------------------------------------------------------------------------------------


def test_roco_label_sets_splits_and_images(tmp_path):
    write_roco(tmp_path)
    ds = load_dataset("roco", tmp_path)
    assert ds.split_counts() == {"train": 3, "dev": 1, "test": 1}
    r = {x.id: x for x in ds.records}
    assert r["ROCO_00001"].labels == ("Diagnostic Procedure", "Finding")
    assert r["ROCO_00003"].labels == () and r["ROCO_00001"].text == "CT of the chest showing a nodule"
    assert len(ds.report.missing_images) == 5 and ds.report.missing_images[0] == "PMC100001_gr1.jpg"
    cuis = load_dataset("roco", tmp_path, label_set="cuis")
    assert {x.id: x for x in cuis.records}["ROCO_00001"].labels == ("C0040405", "C0028259")
    write_png(tmp_path / "train" / "images" / "PMC100001_gr1.jpg")
    ds = load_dataset("roco", tmp_path)
    assert {x.id: x for x in ds.records}["ROCO_00001"].image == tmp_path / "train" / "images" / "PMC100001_gr1.jpg"
    with open(tmp_path / "train" / "captions.txt", "a") as f:
        f.write("ROCO_00001\tduplicate\nbroken-line-without-tab\n")
    with pytest.raises(DataError, match="2 bad item"):
        load_dataset("roco", tmp_path)


# --- real data ------------------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_data_counts(shared_data):
    mp = load_dataset("medpix2", shared_data / "medpix2")
    assert len(mp) == 2050 and mp.split_counts() == {"train": 1653, "dev": 197, "test": 200}
    assert len(mp.label_vocab) == 90 and all(r.image is not None for r in mp.records)
    assert all(r.title for r in mp.records)
    assert next(r for r in mp.records if r.id == "MPX1009_synpic46283").title == "Bladder Diverticulum"
    assert len(load_dataset("medpix2", shared_data / "medpix2", label_set="labels_coarse").label_vocab) == 7

    openi = shared_data / "openi-reports"
    kaggle = load_dataset("openi", openi, layout="kaggle", skip_bad=True)
    assert len(kaggle.report.skipped) == 25  # reports with neither findings nor impression
    assert len(kaggle) == 7426 and len(kaggle.report.missing_images) == 7426
    assert len(load_dataset("openi", openi, layout="kaggle", skip_bad=True, unit="study")) == 3826
    assert "normal" in kaggle.label_vocab and "no indexing" not in kaggle.label_vocab
    r2gen = load_dataset("openi", openi, layout="r2gen")
    assert len(r2gen) == 7430 and r2gen.split_counts() == {"train": 5943, "dev": 743, "test": 744}
    # tags joined from indiana_reports.csv; the rest are studies indexed only as "No Indexing"
    assert sum(1 for r in r2gen.records if r.labels) == 7258
    assert np.array_equal(kaggle.label_matrix().sum(0) > 0, np.ones(len(kaggle.label_vocab), bool))

    roco = load_dataset("roco", shared_data / "roco")
    assert len(roco) == 6118 and roco.split_counts() == {"train": 4895, "dev": 611, "test": 612}
    assert sum(1 for r in roco.records if not r.labels) == 429


def test_generic_csv_reads_dicom_images(tmp_path):
    from data_fixtures import write_dicom
    from mcmfh.data import load_image

    write_dicom(tmp_path / "scans" / "IM0001", np.array([[0, 4095]], dtype=np.uint16), "MONOCHROME1")
    (tmp_path / "scans" / "IM0002").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 10)  # marker, broken header
    (tmp_path / "a.csv").write_text(
        "image,text,labels,split\nscans/IM0001,Chest film,chest,train\nscans/IM0002,Broken,chest,dev\n"
    )
    with pytest.raises(DataError, match="IM0002"):
        load_dataset("csv", tmp_path / "a.csv")
    ds = load_dataset("csv", tmp_path / "a.csv", skip_bad=True)
    assert len(ds) == 1 and np.asarray(load_image(ds.records[0].image))[0, :, 0].tolist() == [255, 0]
