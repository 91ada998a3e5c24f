"""The shipped Open-i and ROCO configs run end to end on small generated layouts with images (data_root overridden,
tiny encoder, one seed, 16 bits, a short method list), through the API and the CLI's ``--set``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_fixtures import write_openi_with_images, write_roco_with_images
from mcmfh.cli import main
from mcmfh.errors import MCMFHError
from mcmfh.training.experiment import load_config, parse_overrides, run_experiment
from tiny_config import TINY_MCMFH

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHORT_MCMFH = {**TINY_MCMFH, "epochs_stage2": 3, "batch_size": 32}
METHODS = ["cca-itq", "lsh", "chance", "mcmfh"]


def _overrides(root: Path) -> dict:
    return {
        "data_root": str(root), "encoder": "tiny", "bits": [16], "seeds": [0], "seeds_by_bits": {},
        "methods": METHODS, "method_options": {"mcmfh": SHORT_MCMFH},
    }  # fmt: skip


@pytest.mark.slow  # a whole experiment per dataset layout (encode, 4 methods): 20-30 s each on 2 busy cores
@pytest.mark.parametrize(
    ("config", "build", "label_set"),
    [("openi.yaml", write_openi_with_images, "mesh"), ("roco.yaml", write_roco_with_images, "semtypes")],
)
def test_dataset_config_runs_on_a_generated_layout(tmp_path, config, build, label_set) -> None:
    root = build(tmp_path / "data")
    shipped = load_config(CONFIGS / config)  # the config as shipped parses, with its full method list
    assert shipped.label_set == label_set and "continuous-mcmfh" in shipped.methods and shipped.skip_bad
    assert 16 in shipped.bits and len(shipped.seeds_by_bits.get(16, shipped.seeds)) >= 3
    out = tmp_path / "out"
    logs: list[str] = []
    run_experiment(CONFIGS / config, out, log=logs.append, overrides=_overrides(root))
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert sorted(rows) == sorted(METHODS)
    assert all(r["label_set"] == label_set and r["encoder"] == "tiny" and r["bits"] == 16 for r in rows.values())
    chance = rows["chance"]
    for method in ("cca-itq", "lsh"):  # the linear baselines learn on ~100 tiny-encoder pairs; clearly above chance
        for d in ("i2t", "t2i"):
            assert rows[method][f"{d}_map_all"] > chance[f"{d}_map_all"] + 0.03, (method, d, rows[method], chance)
    # MCMFH only has to run here: ~100 pairs of tiny-encoder features are too little for it to learn
    # (test_model_mcmfh.py checks that it learns); its row must still be complete and valid.
    m = rows["mcmfh"]
    assert m["bytes_per_item"] == 2 and m["train_seconds"] > 0 and m["n_queries"]["i2t"] > 0
    assert all(0 < m[f"{d}_map_all"] <= 1 and 0 < m[f"{d}_map_50"] <= 1 for d in ("i2t", "t2i"))
    md = (out / "results.md").read_text()
    assert f"Label set `{label_set}`" in md and "Chance check" in md and "| mcmfh | 16 | 1 |" in md
    if config == "openi.yaml":  # the empty-report study was left out, not fatal
        assert any("left out 1 bad item" in line for line in logs), logs


def test_cli_set_overrides_and_prints_the_report_path(tmp_path, capsys) -> None:
    root = write_roco_with_images(tmp_path / "data", n=60)
    sets = ["--set", f"data_root={root}", "--set", "encoder=tiny", "--set", "bits=[16]", "--set", "seeds=[0]"]
    sets += ["--set", "seeds_by_bits={}", "--set", "methods=[cca-sign, chance]"]
    assert main(["experiment", str(CONFIGS / "roco.yaml"), "--out", str(tmp_path / "out"), *sets]) == 0
    printed = capsys.readouterr().out
    assert f"results.md: {(tmp_path / 'out' / 'results.md').resolve()}" in printed
    assert main(["experiment", str(CONFIGS / "roco.yaml"), "--out", str(tmp_path / "o2"), "--set", "bits"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_overrides_parse_yaml_values_dotted_keys_and_cwd_paths(tmp_path, monkeypatch) -> None:
    assert parse_overrides(["bits=[16, 32]", "method_options.mcmfh.epochs_stage2=2", "label_set=null"]) == {
        "bits": [16, 32], "method_options.mcmfh.epochs_stage2": 2, "label_set": None,
    }  # fmt: skip
    monkeypatch.chdir(tmp_path)
    cfg = load_config(CONFIGS / "openi.yaml", {"data_root": "here/openi", "method_options.mcmfh.epochs_stage2": 2})
    assert cfg.data_root == (tmp_path / "here" / "openi").resolve()  # relative to the cwd, not configs/
    assert cfg.method_options["mcmfh"] == {"epochs_stage2": 2}  # added beside the config's own options
    assert cfg.method_options["jdsh"] == {"epochs": 60, "eval_every": 2}
    with pytest.raises(MCMFHError, match="'methods'.*not registered.*nope"):
        load_config(CONFIGS / "openi.yaml", {"methods": ["nope"]})
    with pytest.raises(MCMFHError, match="'dataset_options'"):
        load_config(CONFIGS / "openi.yaml", {"dataset_options": 3})


DEEP_UNSUPERVISED = ["djsrh", "jdsh", "dgcpn", "ucch"]
SUPERVISED_BLOCK = ["dcmht-head", "dsph-head", "tripah-head", "mcmfh-supervised"]


@pytest.mark.parametrize("config", ["medpix2.yaml", "medpix2-deep-baselines.yaml", "openi.yaml", "roco.yaml"])
def test_dataset_configs_carry_the_deep_baselines(config) -> None:
    cfg = load_config(CONFIGS / config)  # validates every method's options by building it
    want = [m for m in DEEP_UNSUPERVISED if not (config == "roco.yaml" and m == "dgcpn")] + SUPERVISED_BLOCK
    assert set(want) <= set(cfg.methods), (config, cfg.methods)
    assert {"mcmfh", "cca-itq"} <= set(cfg.methods)
    assert cfg.method_options["ucch"]["eval_every"] > 1  # UCCH's 100 epochs are checked on dev every N only
    if config.startswith("medpix2"):
        assert cfg.bits == [16, 32, 64] and cfg.seeds == [0, 1, 2] and not cfg.seeds_by_bits


def test_narrowing_methods_from_the_command_line_drops_the_other_methods_options(tmp_path) -> None:
    cfg = load_config(CONFIGS / "medpix2-deep-baselines.yaml", parse_overrides(["methods=[ucch, cca-itq]"]))
    assert cfg.methods == ["ucch", "cca-itq"] and set(cfg.method_options) == {"ucch"}
    bad = tmp_path / "x.yaml"  # in a file, options for a method that is not listed are still a mistake
    bad.write_text("methods: [cca-itq]\nfeatures: f\nmethod_options: {jdsh: {epochs: 2}}\n")
    with pytest.raises(MCMFHError, match="options for methods not in 'methods'"):
        load_config(bad)
