"""Two-stage figures in experiments (rows, results.md, resume) and in ``mcmfh evaluate`` (issue 17, part 2)."""

from __future__ import annotations

import json

import pytest

from conftest import make_features
from mcmfh.cli import main
from mcmfh.errors import MCMFHError
from mcmfh.evaluation.metrics import RankingOptions, relevance
from mcmfh.evaluation.report import results_markdown
from mcmfh.evaluation.rerank_eval import RerankOptions, evaluate_two_stage
from mcmfh.features import FeatureSet
from mcmfh.training.experiment import load_config, run_experiment
from mcmfh.training.runs import fit_method

CONFIG = """
features: feats
bits: [8]
seeds: [0]
methods: [cca-itq, chance, continuous-cca]
rerank: {payloads: [int8, int4], k: 10, oversample: 2}
"""
TWO_STAGE_KEYS = ("map_2s_int8", "map_2s_int8_all", "p10_2s_int8", "p20_2s_int8", "p10_2s_int4")


@pytest.fixture
def feat_dir(tmp_path):
    return make_features(n=200, di=24, dt=16, seed=2).save(tmp_path / "feats")


def _rows(out):
    return {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}


def test_experiment_rows_carry_two_stage_figures_equal_to_a_direct_evaluation(tmp_path, feat_dir):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out"
    run_experiment(cfg, out, log=lambda s: None)
    rows = _rows(out)
    itq = rows["cca-itq"]
    assert itq["rerank"] == {"payloads": ["int8", "int4"], "k": 10, "oversample": 2.0}
    assert itq["bytes_2s_int8"] == 8 and itq["bytes_2s_int4"] == 4 and itq["bytes_per_item"] == 1
    for d in ("i2t", "t2i"):
        for key in TWO_STAGE_KEYS:
            assert 0.0 <= itq[f"{d}_{key}"] <= 1.0
    # No relaxed output (chance) or nothing to re-score (continuous): no figures, no crash.
    for name in ("chance", "continuous-cca"):
        assert (
            rows[name]["rerank"] is None and not any("_2s_" in k for k in rows[name]) and "two_stage" not in rows[name]
        )

    # The same numbers as a direct call to the two-stage evaluation on the same fit.
    feats = FeatureSet.load(feat_dir)
    m, _ = fit_method(feats, "cca-itq", 8, 0, {})
    q, db = feats.splits("test"), feats.splits("train", "dev")
    qi, dbi = q.subset(q.has_image), db.subset(db.has_image)
    codes = {
        "q_image": m.encode_images(qi.image),
        "q_text": m.encode_texts(q.text),
        "db_image": m.encode_images(dbi.image),
        "db_text": m.encode_texts(db.text),
    }
    direct = evaluate_two_stage(
        m, qi.image, q.text, dbi.image, db.text,
        relevance(qi.labels, db.labels), relevance(q.labels, dbi.labels),
        codes, RerankOptions(("int8", "int4"), 10, 2.0), RankingOptions(map_k=50),
    )  # fmt: skip
    for p in ("int8", "int4"):
        for d in ("i2t", "t2i"):
            assert itq[f"{d}_map_2s_{p}"] == pytest.approx(direct[p][d]["k"]["map"], abs=1e-12)
            assert itq[f"{d}_map_2s_{p}_all"] == pytest.approx(direct[p][d]["all"]["map"], abs=1e-12)
            for k in ("10", "20"):
                assert itq[f"{d}_p{k}_2s_{p}"] == pytest.approx(direct[p][d]["k"]["p_at_k"][k], abs=1e-12)
    # Bounded re-scoring changes the order the user sees: with k = 10 the figures differ from one-stage.
    assert itq["i2t_map_2s_int8"] != itq["i2t_map"]

    md = (out / "results.md").read_text()
    table = md.split("### Two-stage")[1]
    lines = [line for line in table.splitlines() if line.startswith("| cca-itq | 8 | 1 |")]
    assert [line.split(" | ")[3] for line in lines] == ["int8", "int4"]
    cells = lines[0].strip("| ").split(" | ")
    assert cells[4] == "1 + 8" and cells[5] == f"{itq['i2t_map']:.3f}" and cells[7] == f"{itq['i2t_map_2s_int8']:.3f}"
    assert f"{itq['i2t_p10']:.3f} / {itq['t2i_p10']:.3f} → {itq['i2t_p10_2s_int8']:.3f}" in cells[10]
    assert "| chance |" not in table and "| continuous-cca |" not in table


def test_resume_recomputes_only_rows_missing_two_stage_figures(tmp_path, feat_dir):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(CONFIG.replace("rerank: {payloads: [int8, int4], k: 10, oversample: 2}\n", "rerank: none\n"))
    out = tmp_path / "out"
    run_experiment(cfg, out, log=lambda s: None)
    assert not any("_2s_" in k for r in _rows(out).values() for k in r)
    assert "### Two-stage" not in (out / "results.md").read_text()
    # A row written before two-stage existed: no "rerank" key at all; turning rerank on recomputes it only.
    row_file = out / "rows" / "cca-itq-8-0.json"
    row = json.loads(row_file.read_text())
    del row["rerank"]
    row_file.write_text(json.dumps(row))
    cfg.write_text(CONFIG)
    logs: list[str] = []
    run_experiment(cfg, out, log=logs.append)
    assert sum("skipped" in line for line in logs) == 2  # chance and continuous-cca: their keys did not change
    assert any("cca-itq" in line and "recomputing" in line for line in logs)
    assert any("cca-itq" in line and "two-stage int8 i2t" in line for line in logs)
    assert "i2t_map_2s_int8" in _rows(out)["cca-itq"]
    # Other rerank settings: recomputed again; the same settings: skipped.
    logs.clear()
    run_experiment(cfg, out, log=logs.append)
    assert sum("skipped" in line for line in logs) == 3
    cfg.write_text(CONFIG.replace("k: 10", "k: 20"))
    logs.clear()
    run_experiment(cfg, out, log=logs.append)
    assert sum("skipped" in line for line in logs) == 2 and _rows(out)["cca-itq"]["rerank"]["k"] == 20


def test_report_marks_rows_saved_before_two_stage() -> None:
    base = {
        "label_set": "l", "dataset": "d", "encoder": "e", "continuous": False, "train_seconds": 1.0,
        "bytes_per_item": 2, "i2t_map_all": 0.5, "t2i_map_all": 0.5,
        "i2t_map_all_tie_aware": 0.5, "t2i_map_all_tie_aware": 0.5, "i2t_map": 0.5, "t2i_map": 0.5,
        "i2t_map_50_tie_aware": 0.5, "t2i_map_50_tie_aware": 0.5, "i2t_p10": 0.4, "t2i_p10": 0.4,
        "i2t_p20": 0.3, "t2i_p20": 0.3,
    }  # fmt: skip
    two = {"rerank": {"payloads": ["int8"], "k": 100, "oversample": 10.0}, "bytes_2s_int8": 16}
    for d in ("i2t", "t2i"):
        two |= {f"{d}_map_2s_int8": 0.6, f"{d}_map_2s_int8_all": 0.61, f"{d}_p10_2s_int8": 0.7}
        two |= {f"{d}_p20_2s_int8": 0.65, f"{d}_candidates_2s_int8": 120.0}
    rows = [
        {**base, "method": "lsh", "bits": 16, "seed": 0, **two},
        {**base, "method": "cca-itq", "bits": 16, "seed": 0},  # cached before two-stage existed
        {**base, "method": "chance", "bits": 16, "seed": 0, "rerank": None},  # no relaxed output
    ]
    table = results_markdown(rows).split("### Two-stage")[1]
    assert "| lsh | 16 | 1 | int8 | 2 + 16 | 0.500 | 0.500 | 0.600 | 0.600 | 0.610 / 0.610 |" in table
    assert "0.400 / 0.400 → 0.700 / 0.700" in table and "120 / 120" in table
    assert "| cca-itq | 16 | 1 | int8 | not computed" in table and "| chance |" not in table


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("rerank: {payloads: [int9]}\n", "unknown payload 'int9'"),
        ("rerank: {k: 0}\n", "k must be >= 1"),
        ("rerank: {k: ten}\n", "'rerank.k'"),
        ("rerank: {oversample: 0.5}\n", "oversample must be >= 1"),
        ("rerank: {payload: [int8]}\n", "'rerank': unknown key.*payload"),
        ("rerank: int8\n", "'rerank': expected none or a mapping"),
    ],
)
def test_rerank_config_errors(tmp_path, text, match):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("methods: [cca-itq]\nfeatures: x\n" + text)
    with pytest.raises(MCMFHError, match=match):
        load_config(cfg)


def test_rerank_default_is_int8_and_none_turns_it_off(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("methods: [cca-itq]\nfeatures: x\n")
    opts = load_config(cfg).rerank
    assert opts is not None and tuple(opts.payloads) == ("int8",) and opts.k == 100
    assert load_config(cfg, {"rerank": "none"}).rerank is None
    assert tuple(load_config(cfg, {"rerank": {"payloads": "float16"}}).rerank.payloads) == ("float16",)


def test_cli_evaluate_reports_two_stage(tmp_path, feat_dir, capsys):
    run = tmp_path / "run"
    assert main(["train", "--features", str(feat_dir), "--method", "cca-itq", "--bits", "16", "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--features", str(feat_dir), "--rerank", "int8,int4", "--rerank-k", "10"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["bytes_2s_int8"] == 16 and metrics["bytes_2s_int4"] == 8 and 0 < metrics["t2i_p20_2s_int4"] <= 1
    assert "two-stage int8 (16 bytes/item, k 10, oversample 10)" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--features", str(feat_dir), "--rerank", "none", "--overwrite"]) == 0
    assert "two_stage" not in json.loads((run / "metrics.json").read_text())
    assert "two-stage" not in capsys.readouterr().out
    assert main(["evaluate", str(run), "--features", str(feat_dir), "--rerank", "code64", "--overwrite"]) == 2
    assert "needs the same method fitted at 64 bits" in capsys.readouterr().err
    chance = tmp_path / "chance"
    assert main(["train", "--features", str(feat_dir), "--method", "chance", "--bits", "16", "--out", str(chance)]) == 0
    assert main(["evaluate", str(chance), "--features", str(feat_dir)]) == 0
    assert "two-stage: none (chance has no relaxed output" in capsys.readouterr().out
    assert "two_stage" not in json.loads((chance / "metrics.json").read_text())
