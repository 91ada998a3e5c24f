"""results.md: header (date, version, commit), config method order, chance check and the ablation table."""

from __future__ import annotations

import re

from mcmfh import __version__
from mcmfh.evaluation.report import results_markdown, run_info


def _row(method: str, bits: int, seed: int, i2t: float, t2i: float, continuous: bool = False) -> dict:
    return {
        "method": method, "bits": bits, "seed": seed, "label_set": "labels", "dataset": "d", "encoder": "e",
        "continuous": continuous, "i2t_map_all": i2t, "t2i_map_all": t2i, "i2t_map_all_tie_aware": i2t,
        "t2i_map_all_tie_aware": t2i, "i2t_map_50": i2t, "t2i_map_50": t2i, "train_seconds": 1.0,
        "bytes_per_item": bits // 8,
    }  # fmt: skip


def test_report_header_order_chance_and_ablations(tmp_path) -> None:
    rows = []
    for s, noise in enumerate((0.0, 0.02, -0.02)):
        rows += [
            _row("mcmfh", 16, s, 0.50 + noise, 0.48 + noise),
            _row("mcmfh-no-moe", 16, s, 0.40 + noise, 0.49 + noise),  # i2t clearly worse, t2i within std
            _row("mcmfh-supervised", 16, s, 0.60, 0.60),  # named like one, but not an ablation: not in that table
            _row("lsh", 16, s, 0.10, 0.35),  # i2t below chance
            _row("chance", 16, s, 0.30, 0.30),
        ]
    info = run_info(config="configs/x.yaml", cwd=tmp_path)  # tmp_path is no git checkout
    assert info["git_commit"] == "unknown" and info["mcmfh_version"] == __version__
    md = results_markdown(rows, 50, info)
    header = md.splitlines()[2]
    assert re.search(r"date: \d{4}-\d\d-\d\d \d\d:\d\d UTC", header) and f"mcmfh version: {__version__}" in header
    assert "git commit: unknown" in header and "config: configs/x.yaml" in header
    table = [line.split(" | ")[0].strip("| ") for line in md.splitlines() if line.startswith("| ") and "16 | 3" in line]
    assert table == ["mcmfh", "mcmfh-no-moe", "mcmfh-supervised", "lsh", "chance"]  # the config's order
    assert "| mcmfh-supervised | 16 | +" not in md.split("| ablation |")[1]
    assert "NOT above chance: lsh 16 bits i2t" in md and "lsh 16 bits t2i" not in md
    abl = md.split("| ablation |")[1].split("| mcmfh-no-moe | 16 |")[1].splitlines()[0]
    assert "-0.100 ± 0.020" in abl and "i2t: mcmfh better" in abl and "t2i: within std" in abl


def test_run_info_reads_the_commit_of_a_checkout(tmp_path) -> None:
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), *env, "commit", "-qm", "x"], check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert run_info(cwd=tmp_path)["git_commit"] == head.strip()


def test_ablation_equal_to_std_is_no_effect_and_flags() -> None:
    rows = []
    for s, noise in enumerate((0.0, 0.004, -0.004)):
        mc = _row("mcmfh", 16, s, 0.500 + noise, 0.500)
        mc["i2t_map_all"] = 0.530 + noise  # stable order 0.03 above the tie-aware figure: flagged
        mc["code_health"] = {"collapsed": s == 1, "image": {"distinct": 7, "effective_bits": 2.8},
                             "text": {"distinct": 17, "effective_bits": 4.0}}  # fmt: skip
        rows += [mc, _row("mcmfh-no-moe", 16, s, 0.504 + noise, 0.500)]
    md = results_markdown(rows, 50)
    abl = md.split("| mcmfh-no-moe | 16 | +")[1].splitlines()[0]
    assert "i2t: within std" in abl and "ablation better" not in abl  # Δ = +0.004 ± 0.004 is no effect
    line = next(x for x in md.splitlines() if x.startswith("| mcmfh | 16 |"))
    assert "**collapsed** (1/3 seeds)" in line and "i2t stable − tie-aware +0.030" in line
    assert "t2i stable" not in line and "7 (2.8 b) / 17 (4.0 b)" in line
    clean = next(x for x in md.splitlines() if x.startswith("| mcmfh-no-moe | 16 |"))
    assert "collapsed" not in clean and "stable −" not in clean
