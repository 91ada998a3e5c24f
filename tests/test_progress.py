"""Progress on long jobs: plain lines when stderr is not a terminal (first, last, and at most one per interval, with
the figures and an ETA), a bar on a terminal, nothing with --quiet; train reports each stage's epochs with the dev
figure, encode and index build their items."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from conftest import make_features
from mcmfh import progress as progress_mod
from mcmfh.progress import SILENT, Progress
from tiny_config import TINY_MCMFH


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_are_first_last_and_one_per_interval_with_figures_and_eta(monkeypatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    out = io.StringIO()
    p = Progress("lines", out, interval_s=5.0)
    with p.task("train stage 2", total=10, unit="epoch") as task:
        for epoch in range(10):
            clock.now += 2.0  # 2 s per epoch: lines at epochs 1, 4, 7 (>= 5 s apart) and the last
            task.update(1, dev=0.4 + epoch / 100, best=None)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[1].split()[0] for line in lines] == ["1/10", "4/10", "7/10", "10/10"]
    assert lines[0] == "train stage 2: 1/10 epoch (10%) | dev 0.4 | 2s, ETA 18s"  # None figures left out
    assert lines[-1] == "train stage 2: 10/10 epoch (100%) | dev 0.49 | 20s"  # done: no ETA


def test_a_resumed_task_counts_its_rate_from_this_run_only(monkeypatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    out = io.StringIO()
    task = Progress("lines", out).task("encode", total=100, unit="item", initial=90)
    clock.now += 5.0
    task.update(5)
    assert out.getvalue().strip() == "encode: 95/100 item (95%) | 5s, ETA 5s"  # 5 items in 5 s, not 95


def test_cli_mode_follows_the_terminal_and_quiet() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert Progress.for_cli(quiet=True, stream=Tty()).mode == "off"
    assert Progress.for_cli(stream=Tty()).mode == "bar"
    assert Progress.for_cli(stream=io.StringIO()).mode == "lines"
    out = io.StringIO()
    with SILENT.task("x", total=2) as task:
        task.update(2)
    Progress("off", out).write("never")
    assert out.getvalue() == ""
    with pytest.raises(ValueError, match="bar, lines or off"):
        Progress("loud")


def _cli(capsys, *args: str) -> str:
    """Runs a command in this process (stderr captured: not a terminal, so plain lines); returns its stderr."""
    from mcmfh.cli import main

    capsys.readouterr()
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 0, err
    return err


def test_train_encode_and_index_build_report_progress_and_quiet_silences_them(tmp_path: Path, capsys) -> None:
    """Through the CLI with stderr not a terminal (plain lines): the case of a log file or CI."""
    from mcmfh.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n=48, seed=0)
    feats, run, idx = tmp_path / "feats", tmp_path / "run", tmp_path / "idx"
    err = _cli(capsys, "encode", "--dataset", "csv", "--data-root", str(data), "--encoder", "tiny", "--out", str(feats))
    assert re.search(r"^encode: 48/48 item \(100%\) \| \d+s$", err, re.M), err
    options = [x for k, v in {**TINY_MCMFH, "epochs_stage2": 3}.items() for x in ("--option", f"{k}={v}")]
    err = _cli(capsys, "train", "--features", str(feats), "--method", "mcmfh", "--out", str(run), *options)
    for stage, epochs in ((1, 2), (2, 3)):
        assert re.search(rf"^train stage {stage}: {epochs}/{epochs} epoch \(100%\) \| dev [\d.]+ \|", err, re.M)
    assert re.search(r"^train stage 1: 1/2 epoch \(50%\) \| dev [\d.]+ \| best 1 \| \d+s, ETA \d+s$", err, re.M)
    small = r"^note: \d+ training pairs: below 100 pairs UCCH measured ahead of MCMFH image->text"
    assert re.search(small, err, re.M), err
    err = _cli(capsys, "index", "build", str(run), "--features", str(feats), "--out", str(idx))
    assert re.search(r"^index build: (\d+)/\1 sub-index \(100%\)", err, re.M), err
    quiet = _cli(capsys, "encode", "--dataset", "csv", "--data-root", str(data), "--encoder", "tiny", "--out",
                 str(tmp_path / "q"), "--quiet")  # fmt: skip
    assert "encode:" not in quiet and "item" not in quiet


def test_fit_progress_is_off_unless_asked(capsys) -> None:
    from mcmfh.factory import create_method

    fs = make_features(n=60)
    create_method("mcmfh", bits=16, seed=0, **{**TINY_MCMFH, "epochs_stage1": 1, "epochs_stage2": 1}).fit(
        fs.splits("train"), fs.splits("dev")
    )
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # library calls print nothing by default


def test_train_says_when_the_collapse_rescue_ran(tmp_path: Path, capsys) -> None:
    """A fit this short is collapsed on most stage-2 epochs (the tiny config): with the rescue on, `train` prints one
    line saying so and which pass it kept, as its log records."""
    from mcmfh.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n=48, seed=0)
    feats, run = tmp_path / "feats", tmp_path / "run"
    _cli(capsys, "encode", "--dataset", "csv", "--data-root", str(data), "--encoder", "tiny", "--out", str(feats))
    opts = {**TINY_MCMFH, "epochs_stage2": 3, "rescue_collapsed_share": 0.5}
    err = _cli(capsys, "train", "--features", str(feats), "--method", "mcmfh", "--out", str(run), "--quiet",
               *[x for k, v in opts.items() for x in ("--option", f"{k}={v}")])  # fmt: skip
    log = json.loads((run / "train_log.json").read_text(encoding="utf-8"))
    rescue = log["stage2"]["rescue"]
    kept = "the second pass" if rescue["chosen"] else "the first pass"
    line = re.search(r"^note: stage 2's codes were collapsed on (\d+) of its 3 evaluated epochs; .*$", err, re.M)
    assert line and kept in line[0], err
    assert int(line[1]) == sum(r["collapsed"] for r in log["stage2"]["history"]) > 1
