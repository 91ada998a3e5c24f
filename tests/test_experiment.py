"""Train/evaluate runs, the CLI, and the resumable experiment runner on generated features."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest

from conftest import make_features
from mcmfh.cli import main
from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.progress import Progress
from mcmfh.training.experiment import load_config, run_experiment
from mcmfh.training.runs import check_features, load_run, train_run

CONFIG = """
features: feats
label_set: null
bits: [8, 16]
seeds: [0, 1]
seeds_by_bits: {16: [0]}
methods: [cca-itq, cca-sign, continuous-cca, chance]
method_options: {cca-itq: {ridge: 0.01}}
"""


@pytest.fixture
def feat_dir(tmp_path):
    return make_features(n=200, di=24, dt=16, seed=2).save(tmp_path / "feats")


def test_train_run_writes_manifest_log_and_reloads(tmp_path, feat_dir):
    run = train_run(feat_dir, "cca-itq", 16, 3, tmp_path / "run")
    method, manifest = load_run(run)
    assert manifest["kind"] == "run" and manifest["method"] == "cca-itq" and manifest["seed"] == 3
    assert manifest["encoder"] == "generated" and manifest["image_dim"] == 24 and manifest["text_dim"] == 16
    assert json.loads((run / "train_log.json").read_text())["train_seconds"] >= 0
    assert method.bits == 16


def test_evaluating_on_other_encoder_features_is_refused(tmp_path, feat_dir):
    run = train_run(feat_dir, "cca-sign", 8, 0, tmp_path / "run")
    other = make_features(n=200, di=24, dt=16)
    other.manifest["encoder"] = "biomedclip"
    _, manifest = load_run(run)
    with pytest.raises(ArtefactError, match="encoder"):
        check_features(manifest, other, run)


def test_cli_train_and_evaluate(tmp_path, feat_dir, capsys):
    run = tmp_path / "run"
    args = ["train", "--features", str(feat_dir), "--method", "cca-itq", "--bits", "16", "--out", str(run)]
    assert main([*args, "--option", "ridge=0.05"]) == 0
    assert json.loads((run / "method.json").read_text())["options"] == {"ridge": "0.05"}
    assert main(["evaluate", str(run), "--features", str(feat_dir)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 < metrics["i2t_map_all"] <= 1 and "t2i_map_50" in metrics
    assert (run / "pr_curve.png").stat().st_size > 0 and (run / "p_at_k.png").stat().st_size > 0
    assert "mAP (tie-aware) i2t" in capsys.readouterr().out
    assert main([*args[:-1], str(tmp_path / "r2"), "--option", "nope=1"]) == 2  # one-line error, not a traceback
    assert "unknown option" in capsys.readouterr().err
    # study modes: the cache has no studies, so each item is a study of its own; cca-itq has no study head
    assert main(["evaluate", str(run), "--features", str(feat_dir), "--modes", "i2t,t2i,i2s,t2t", "--overwrite"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["i2s_headline"] == "min" and 0 < metrics["i2s_map"] <= 1 and "t2t_map" in metrics
    assert "i2s: mAP (tie-aware)" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--features", str(feat_dir), "--modes", "i2x", "--overwrite"]) == 2
    assert "unknown evaluation mode" in capsys.readouterr().err


def test_experiment_writes_results_and_resumes(tmp_path, feat_dir):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out"
    logs: list[str] = []
    run_experiment(cfg, out, log=logs.append)
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 4 * 2 + 4 * 1  # 8 bits x 2 seeds, 16 bits x 1 seed
    for key in ("i2t_map_all", "t2i_map_all_tie_aware", "i2t_map_50", "train_seconds", "bytes_per_item"):
        assert all(key in r for r in rows)
    assert {r["bytes_per_item"] for r in rows if r["method"] == "cca-itq"} == {1, 2}
    md = (out / "results.md").read_text()
    assert "| cca-itq | 8 | 2 |" in md and "± " in md and "tie-aware" in md
    assert (out / "pr_curve_unnamed_16bits.png").is_file() and (out / "bits_vs_map_unnamed.png").is_file()
    row_file = out / "rows" / "cca-itq-8-0.json"
    mtime = row_file.stat().st_mtime_ns

    logs.clear()
    shown = io.StringIO()
    run_experiment(cfg, out, log=logs.append, progress=Progress("lines", shown, interval_s=3600))
    assert sum("skipped" in line for line in logs) == 12 and row_file.stat().st_mtime_ns == mtime
    # rows done and left: the first and the last update (the interval holds the rest back)
    assert [line.split(" | ")[0] for line in shown.getvalue().splitlines()] == [
        "experiment: 1/12 row (8%)", "experiment: 12/12 row (100%)"]  # fmt: skip

    # Changing one method's options reruns only that method's rows.
    cfg.write_text(CONFIG.replace("ridge: 0.01", "ridge: 0.02"))
    logs.clear()
    run_experiment(cfg, out, log=logs.append)
    redone = [line for line in logs if "skipped" not in line]
    assert len(redone) == 3 and all("cca-itq" in line for line in redone)


def test_experiment_rows_keep_a_deep_baselines_dev_choice(tmp_path, feat_dir):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "features: feats\nlabel_set: null\nbits: [16]\nseeds: [0]\nmethods: [jdsh, cca-itq]\n"
        "method_options: {jdsh: {epochs: 3, eval_every: 2, hidden: 16, batch_size: 32, num_threads: 1}}\n"
    )
    run_experiment(cfg, tmp_path / "out", log=lambda _: None)
    rows = {r["method"]: r for r in json.loads((tmp_path / "out" / "results.json").read_text())["rows"]}
    choice = rows["jdsh"]["dev_choice"]
    assert choice["dev_epochs"] == [2, 3] and choice["chosen_epoch"] in (2, 3)
    assert len(choice["dev_map_tie_aware"]) == 2 and "dev_choice" not in rows["cca-itq"]
    assert rows["jdsh"]["fit"] == {"torch_threads": 1} and "fit" not in rows["cca-itq"]  # what a rerun must match


def test_a_changed_default_reruns_the_rows_it_shapes(tmp_path, feat_dir, monkeypatch):
    """Rows key on the method's resolved recipe, not only on the options the config spells out."""
    import dataclasses

    from mcmfh.baselines.cca_sign import CCASign

    cfg = tmp_path / "exp.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out"
    run_experiment(cfg, out, log=lambda _: None)
    assert CCASign(16).recipe() == dataclasses.asdict(CCASign(16).opts)  # every field, defaults included
    monkeypatch.setattr(CCASign, "recipe", lambda self: {**dataclasses.asdict(self.opts), "ridge": 0.5})
    logs: list[str] = []
    run_experiment(cfg, out, log=logs.append)
    redone = [line for line in logs if "skipped" not in line]
    assert len(redone) == 3 and all("cca-sign" in line for line in redone)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("methods: [cca-itq]\nfeatures: x\nbitz: [16]\n", "unknown field.*bitz"),
        ("methods: [cca-itq, not-a-method]\nfeatures: x\n", "not registered.*not-a-method"),
        ("methods: [cca-itq]\n", "give either 'features'"),
        ("methods: [cca-itq]\nfeatures: x\nbits: sixteen\n", "'bits'.*list of int"),
        ("methods: [cca-itq]\nfeatures: x\nqueries: [tst]\n", "unknown split"),
        ("methods: [cca-itq]\nfeatures: x\nmethod_options: {cca-itq: {rige: 1}}\n", "method_options.cca-itq.*rige"),
    ],
)
def test_config_errors_name_file_and_field(tmp_path, text, match):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(MCMFHError, match=match):
        load_config(cfg)


def test_relative_paths_resolve_against_config_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    cfg = tmp_path / "sub" / "c.yaml"
    cfg.write_text("methods: [chance]\ndataset: medpix2\ndata_root: ../data/medpix2\n")
    assert load_config(cfg).data_root == (tmp_path / "data" / "medpix2").resolve()


def test_shipped_configs_parse_when_their_methods_are_registered():
    from pathlib import Path

    from mcmfh.factory import available_methods

    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("medpix2*.yaml")):
        try:
            cfg = load_config(path)
        except MCMFHError as e:
            # Only acceptable failure: MCMFH methods not (yet) registered in this checkout.
            assert "mcmfh" not in available_methods() and "not registered" in str(e), e
            continue
        assert cfg.dataset == "medpix2" and 16 in cfg.bits and set(cfg.bits) <= {16, 32, 64}, path
        assert cfg.seeds == [0, 1, 2], path  # every shipped figure is a mean over three seeds


def test_experiment_encodes_through_the_feature_cache_when_no_features_given(tmp_path, monkeypatch):
    # The loader and the cache belong to other modules; here we check the runner calls them with the config's values.
    import mcmfh.data
    import mcmfh.encode_features
    import mcmfh.encoders

    calls = {}

    dataset = SimpleNamespace(report=SimpleNamespace(skipped=[]))

    def fake_load(name, root, label_set=None, **options):
        calls["load"] = (name, root, label_set, options)
        return dataset

    def fake_encode(dataset, encoder, out, batch_size=32, progress=None):
        calls["encode"] = (dataset, encoder, out, batch_size)
        fs = make_features(n=200, di=24, dt=16, seed=4)
        fs.manifest["label_set"] = "labels"
        return fs

    monkeypatch.setattr(mcmfh.data, "load_dataset", fake_load, raising=False)
    monkeypatch.setattr(mcmfh.encode_features, "encode_dataset", fake_encode)
    monkeypatch.setattr(mcmfh.encoders, "get_encoder", lambda name, **o: f"ENC:{name}", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "dataset: medpix2\ndata_root: data\nencoder: tiny\nlabel_set: labels\nencode_batch_size: 8\n"
        "bits: [8]\nseeds: [0]\nmethods: [cca-itq]\n"
    )
    run_experiment(cfg, tmp_path / "out", log=lambda s: None)
    assert calls["load"] == ("medpix2", (tmp_path / "data").resolve(), "labels", {"skip_bad": False})
    assert calls["encode"] == (dataset, "ENC:tiny", tmp_path / "out" / "features" / "medpix2-tiny-labels", 8)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"][0]["label_set"] == "labels"
