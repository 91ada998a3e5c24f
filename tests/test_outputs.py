"""Every ``--out`` keeps what we did not make: foreign folders and files survive, with or without --overwrite; an
artefact of the same kind is replaced only with --overwrite, atomically (a killed replacement leaves a valid one)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import make_features
from mcmfh.cli import main
from mcmfh.errors import ArtefactError
from mcmfh.io import atomic_dir, recover_swap
from mcmfh.manifest import new_manifest, read_manifest
from mcmfh.outputs import check_output

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def feat_dir(tmp_path):
    return make_features(n=60).save(tmp_path / "feats")


def _config(tmp_path, feat_dir) -> Path:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"features: {feat_dir}\nmethods: [lsh]\nbits: [16]\nseeds: [0]\n")
    return cfg


def _commands(tmp_path, feat_dir, out: Path) -> dict[str, list[str]]:
    """One command line per --out-writing command; each would write ``out``."""
    return {
        "train": ["train", "--features", str(feat_dir), "--method", "lsh", "--out", str(out)],
        "encode": ["encode", "--dataset", "csv", "--data-root", str(tmp_path / "nodata"), "--encoder", "tiny",
                   "--out", str(out)],
        "experiment": ["experiment", str(_config(tmp_path, feat_dir)), "--out", str(out)],
        "index build": ["index", "build", str(tmp_path / "norun"), "--features", str(feat_dir), "--out", str(out)],
        "demo": ["demo", "--out", str(out)],
        "prepare": ["prepare", "synthetic", "--out", str(out)],
        "evaluate": ["evaluate", str(tmp_path / "norun"), "--features", str(feat_dir), "--out", str(out)],
    }  # fmt: skip


COMMANDS = ["train", "encode", "experiment", "index build", "demo", "prepare", "evaluate"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("overwrite", [False, True])
def test_folder_with_a_file_survives(tmp_path, feat_dir, capsys, command, overwrite):
    out = tmp_path / "reports"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = _commands(tmp_path, feat_dir, out)[command]
    if overwrite and command not in ("demo", "prepare"):  # those two resume only; they have no --overwrite
        args.append("--overwrite")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(out) in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("command", COMMANDS)
def test_plain_file_survives(tmp_path, feat_dir, capsys, command):
    out = tmp_path / "data.csv"
    out.write_text("id,text\n1,x\n")
    args = _commands(tmp_path, feat_dir, out)[command]
    if command not in ("demo", "prepare"):
        args.append("--overwrite")
    assert main(args) == 2
    assert str(out) in capsys.readouterr().err
    assert out.read_text() == "id,text\n1,x\n"


def test_artefact_of_another_kind_survives(tmp_path, feat_dir, capsys):
    out = tmp_path / "F"
    make_features(n=30).save(out)
    before = sorted(p.name for p in out.iterdir())
    assert main(_commands(tmp_path, feat_dir, out)["train"] + ["--overwrite"]) == 2
    assert "'features' artefact, not a 'run'" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before and read_manifest(out, "features")


def test_train_replaces_a_run_only_with_overwrite(tmp_path, feat_dir, capsys):
    out = tmp_path / "run"
    args = _commands(tmp_path, feat_dir, out)["train"]
    assert main(args) == 0
    first = read_manifest(out, "run")
    assert main(args + ["--seed", "1"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert read_manifest(out, "run") == first
    assert main(args + ["--seed", "1", "--overwrite"]) == 0
    assert read_manifest(out, "run")["seed"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run")] == []  # no temp or old left


def test_evaluate_out_file_replaced_only_with_overwrite(tmp_path, feat_dir, capsys):
    run = tmp_path / "run"
    assert main(_commands(tmp_path, feat_dir, run)["train"]) == 0
    out = tmp_path / "m.json"
    args = ["evaluate", str(run), "--features", str(feat_dir), "--out", str(out)]
    assert main(args) == 0
    out.write_text('{"mine": 1}')
    assert main(args) == 2 and json.loads(out.read_text()) == {"mine": 1}
    assert main([*args, "--overwrite"]) == 0 and "i2t_map_all" in json.loads(out.read_text())


def test_experiment_resumes_into_its_own_folder_and_overwrite_starts_afresh(tmp_path, feat_dir, capsys):
    out = tmp_path / "exp"
    args = _commands(tmp_path, feat_dir, out)["experiment"]
    assert main(args) == 0
    assert read_manifest(out, "experiment")
    (out / "extra.txt").write_text("left by the old run")
    assert main(args) == 0  # resuming is not overwriting
    assert "done, skipped" in capsys.readouterr().out and (out / "extra.txt").is_file()
    assert main([*args, "--overwrite"]) == 0
    assert "done, skipped" not in capsys.readouterr().out
    assert not (out / "extra.txt").exists() and (out / "results.json").is_file()


def test_index_build_overwrite_keeps_a_folder_that_is_not_an_archive(tmp_path, capsys):
    from mcmfh.data import load_dataset
    from mcmfh.data.synthetic import make_synthetic_dataset
    from mcmfh.encode_features import encode_dataset
    from mcmfh.encoders import get_encoder

    ds = load_dataset("csv", make_synthetic_dataset(tmp_path / "syn", n=48, seed=0))
    encode_dataset(ds, get_encoder("tiny"), tmp_path / "feats")
    run = tmp_path / "run"
    assert main(_commands(tmp_path, tmp_path / "feats", run)["train"]) == 0
    args = ["index", "build", str(run), "--features", str(tmp_path / "feats"), "--out", str(run)]
    assert main([*args, "--overwrite"]) == 2  # a run folder is not an archive
    assert read_manifest(run, "run")
    out = tmp_path / "archive"
    args[-1] = str(out)
    assert main(args) == 0
    first = read_manifest(out, "archive")["created"]
    assert main(args) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert read_manifest(out, "archive")["created"] == first
    assert main([*args, "--overwrite"]) == 0 and read_manifest(out, "archive")


def test_prepare_resumes_its_own_folder(tmp_path, capsys):
    out = tmp_path / "syn"
    args = ["prepare", "synthetic", "--out", str(out)]
    assert main(args) == 0 and read_manifest(out, "dataset")
    assert main(args) == 0 and (out / "synthetic.csv").is_file() and read_manifest(out, "dataset")


def test_check_output_plans(tmp_path):
    assert check_output(tmp_path / "new", "run") == "new"
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", "run") == "new"
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(ArtefactError, match="symbolic link"):
        check_output(tmp_path / "link", "run", overwrite=True)
    run = tmp_path / "r"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(new_manifest("run")))
    assert check_output(run, "run", overwrite=True) == "replace"
    assert check_output(run, "run", resumable=True) == "resume"
    with pytest.raises(ArtefactError, match="--overwrite"):
        check_output(run, "run")


def test_swap_stopped_between_two_renames_is_undone(tmp_path, monkeypatch):
    """Without renameat2 a replacement is two renames; a crash between them is repaired on the next access."""
    import mcmfh.io as io_mod

    out = tmp_path / "a"
    with atomic_dir(out) as t:
        (t / "manifest.json").write_text('{"kind": "run", "v": 1}')
    monkeypatch.setattr(io_mod, "_exchange", lambda a, b: False)
    real = os.replace
    calls = []

    def crash_after_first(src, dst):
        calls.append(src)
        real(src, dst)
        if len(calls) == 1:
            raise KeyboardInterrupt  # the process dies with the old version moved aside

    monkeypatch.setattr(io_mod.os, "replace", crash_after_first)
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as t:
        (t / "manifest.json").write_text('{"kind": "run", "v": 2}')
    monkeypatch.setattr(io_mod.os, "replace", real)
    assert not out.exists()
    assert check_output(out, "run", overwrite=True) == "replace"  # recovered first
    assert json.loads((out / "manifest.json").read_text())["v"] == 1
    assert recover_swap(out) is False


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mcmfh.io import atomic_dir
    out, v = Path(sys.argv[1]), 0
    while True:
        v += 1
        with atomic_dir(out) as tmp:
            for i in range(20):
                (tmp / f"part-{i}").write_text(str(v))
            (tmp / "manifest.json").write_text('{"kind": "run", "v": %d}' % v)
""")


def test_killed_mid_replace_leaves_a_valid_artefact(tmp_path):
    """A process replacing the artefact over and over is SIGKILLed at random moments: each time the folder holds
    one complete version (all parts agree with the manifest)."""
    out = tmp_path / "a"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for delay in (0.3, 0.45, 0.6, 0.75):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], env=env)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        recover_swap(out)
        manifest = json.loads((out / "manifest.json").read_text())
        assert {(out / f"part-{i}").read_text() for i in range(20)} == {str(manifest["v"])}
