"""PACS client configuration, auth, filters and SR text (no server needed)."""

from __future__ import annotations

import pytest

from mcmfh.errors import DataError, MCMFHError

pytest.importorskip("requests")


def test_config_refuses_credentials_in_url_and_bad_values():
    from mcmfh.pacs import PacsConfig

    with pytest.raises(MCMFHError, match="no credentials in the URL"):
        PacsConfig(url="https://alice:pw@pacs.example/dicom-web")
    with pytest.raises(MCMFHError, match="http"):
        PacsConfig(url="pacs.example/dicom-web")
    with pytest.raises(MCMFHError, match="workers"):
        PacsConfig(url="https://pacs.example/dicom-web", workers=0)
    assert PacsConfig(url="https://pacs.example/dicom-web/?x=1").public_url == "https://pacs.example/dicom-web"


def test_auth_from_env_and_token_never_in_repr():
    from requests.auth import HTTPBasicAuth

    from mcmfh.pacs.client import BearerAuth, auth_from_env

    assert auth_from_env({}) is None
    bearer = auth_from_env({"MCMFH_PACS_TOKEN": "tok-123"})
    assert isinstance(bearer, BearerAuth) and "tok-123" not in repr(bearer)

    class Req:
        headers: dict = {}

    assert bearer(Req()).headers["Authorization"] == "Bearer tok-123"
    basic = auth_from_env({"MCMFH_PACS_USER": "u", "MCMFH_PACS_PASSWORD": "p"})
    assert isinstance(basic, HTTPBasicAuth) and (basic.username, basic.password) == ("u", "p")
    with pytest.raises(MCMFHError, match="not both"):
        auth_from_env({"MCMFH_PACS_TOKEN": "t", "MCMFH_PACS_USER": "u", "MCMFH_PACS_PASSWORD": "p"})
    with pytest.raises(MCMFHError, match="MCMFH_PACS_PASSWORD"):
        auth_from_env({"MCMFH_PACS_USER": "u"})


def test_filters_parse_and_match():
    from mcmfh.pacs import Filters

    f = Filters(since="2024-01-01", until="20241231", modalities=("ct", " mr"), body_parts=("chest",))
    assert f.date_range() == "20240101-20241231" and f.modalities == ("CT", "MR")
    assert f.matches("CT", "CHEST", "20240505")
    assert not f.matches("CR", "CHEST", "20240505")
    assert not f.matches("CT", "HEAD", "20240505")
    assert not f.matches("CT", "CHEST", "20231231") and not f.matches("CT", "CHEST", "")
    assert Filters().matches("XA", "", "") and Filters().date_range() is None
    with pytest.raises(MCMFHError, match="--since"):
        Filters(since="last week")


def test_sr_text_walks_content_tree(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from mcmfh.pacs.reports import ReportFile, sr_text

    def item(kind, **kw):
        d = Dataset()
        d.ValueType = kind
        for k, v in kw.items():
            setattr(d, k, v)
        return d

    code = Dataset()
    code.CodeMeaning = "Pneumothorax"
    children = [item("TEXT", TextValue="small apical"), item("CODE", ConceptCodeSequence=Sequence([code]))]
    inner = item("CONTAINER", ContentSequence=Sequence(children))
    ds = Dataset()
    ds.PatientName = "Never^Shown"
    ds.ContentSequence = Sequence([item("TEXT", TextValue="Findings: "), inner, item("NUM")])
    assert sr_text(ds) == "Findings:\nsmall apical\nPneumothorax"

    bad = tmp_path / "r.jsonl"
    bad.write_text('{"accession_number": "A1", "report": "ok"}\n{"report": "no key"}\n')
    with pytest.raises(DataError, match=r"r.jsonl:2: needs 'accession_number'"):
        ReportFile.load(bad)
    bad.write_text('{"accession_number": "A1", "report": "ok"}\n')
    assert ReportFile.load(bad).by_accession == {"A1": "ok"}
