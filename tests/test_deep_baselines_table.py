"""benchmarks/deep_baselines.py: the comparison table and the 16-bit verdict from generated experiment rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _row(method: str, bits: int, seed: int, i2t: float, t2i: float, epoch: int | None = None) -> dict:
    row = {"method": method, "bits": bits, "seed": seed, "i2t_map": i2t, "t2i_map": t2i, "train_seconds": 2.0,
           "bytes_per_item": bits // 8}  # fmt: skip
    row["code_health"] = {"collapsed": method == "jdsh" and seed == 0, "image": {"effective_bits": 5.0},
                          "text": {"effective_bits": 6.0}}  # fmt: skip
    if epoch is not None:
        row["dev_choice"] = {"chosen_epoch": epoch, "dev_epochs": [2, 4], "dev_map_tie_aware": [0.1, 0.2]}
    return row


def test_table_and_verdict(tmp_path) -> None:
    rows = [_row("mcmfh", 16, s, 0.36 + 0.01 * s, 0.40) for s in (0, 1, 2)]
    rows += [_row("jdsh", 16, s, 0.33, 0.30, epoch=4) for s in (0, 1, 2)]  # best unsupervised i2t: x1.12, misses
    rows += [_row("djsrh", 16, s, 0.20, 0.34, epoch=6) for s in (0, 1, 2)]  # best unsupervised t2i: x1.18, meets
    rows += [_row("dsph-head", 16, 0, 0.50, 0.50, epoch=2)]  # supervised: never the rival in the verdict
    rows += [_row("mcmfh", 32, 0, 0.4, 0.4)]
    (tmp_path / "results.json").write_text(json.dumps({"rows": rows}))
    out = tmp_path / "table"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "deep_baselines.py"), str(tmp_path / "results.json"),
                    "--out", str(out)], check=True, capture_output=True)  # fmt: skip
    md = out.with_suffix(".md").read_text()
    jdsh = "| jdsh | unsupervised | 3 | 0.330 ± 0.000 | 0.300 ± 0.000 | ×1.12 / ×1.33 | 2.0 | 2 | 4, 4, 4 | 5.0 / 6.0 |"
    assert jdsh + " 1 of 3 |" in md
    assert "| mcmfh | reference | 3 | 0.370 ± 0.010 | 0.400 ± 0.000 | – / – |" in md
    assert "| dsph-head | supervised | 1 |" in md and "### 32 bits" in md
    assert "- i2t: mcmfh 0.370 vs best unsupervised jdsh 0.330: ×1.12 — misses the target" in md
    assert "- t2i: mcmfh 0.400 vs best unsupervised djsrh 0.340: ×1.18 — meets the target" in md
    data = json.loads(out.with_suffix(".json").read_text())
    assert len(data["summary"]) == 5 and len(data["dev_choice"]) == 7


def test_bad_input_is_one_line(tmp_path) -> None:
    (tmp_path / "results.json").write_text("{}")
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "deep_baselines.py"), str(tmp_path / "results.json"),
                        "--out", str(tmp_path / "t")], capture_output=True, text=True)  # fmt: skip
    assert p.returncode != 0 and "not an experiment results.json" in p.stderr and "Traceback" not in p.stderr


def test_robustness_methods_take_groups_and_refuse_unknown_names(tmp_path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import robustness
    finally:
        sys.path.pop(0)
    assert robustness.expand_methods("default") == ["mcmfh", "cca-itq", "ucmfh"]
    assert robustness.expand_methods("mcmfh,deep,supervised,jdsh") == [
        "mcmfh", "djsrh", "jdsh", "dgcpn", "ucch", "dcmht-head", "dsph-head", "tripah-head", "mcmfh-supervised",
    ]  # fmt: skip
    cmd = [sys.executable, str(REPO / "benchmarks" / "robustness.py"), "--features", str(tmp_path),
           "--out", str(tmp_path / "o"), "--methods", "default,nope"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode != 0 and "--methods: unknown ['nope']" in p.stderr and "Traceback" not in p.stderr


def test_robustness_verdict_judges_each_kind_against_its_own_baselines() -> None:
    """MCMFH against the unsupervised baselines only (a supervised head's higher mAP does not make it 'behind'), and
    mcmfh-supervised against the supervised heads only; ablation rows are never a rival."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import robustness
    finally:
        sys.path.pop(0)

    def rows(method: str, value: float) -> list[dict]:
        keys = ("i2t_map", "t2i_map", "i2t_paired_r10", "t2i_paired_r10")
        return [{"setting": "s", "method": method, "code_health": None, **dict.fromkeys(keys, value)}] * 2

    table = [*rows("mcmfh", 0.5), *rows("cca-itq", 0.4), *rows("dcmht-head", 0.9), *rows("mcmfh-no-dv", 0.95),
             *rows("mcmfh-supervised", 0.6), *rows("dsph-head", 0.7)]  # fmt: skip
    (unsup,) = robustness.verdict(table, ["s"])
    assert "mcmfh level or ahead" in unsup and "vs cca-itq" in unsup
    (sup,) = robustness.verdict(table, ["s"], "mcmfh-supervised", supervised=True)
    assert "mcmfh-supervised BEHIND" in sup and "best dcmht-head)" in sup and "cca-itq" not in sup
    for r in table:  # a rival ahead only with collapsed codes is named as such
        if r["method"] == "dcmht-head":
            r["code_health"] = {"collapsed": True}
    (sup,) = robustness.verdict(table, ["s"], "mcmfh-supervised", supervised=True)
    assert "best dcmht-head, collapsed 2/2" in sup


def test_robustness_rows_say_which_code_fitted_them_and_stale_ones_are_named_or_refitted(tmp_path) -> None:
    """The row cache is keyed by the recipe, not the code: a row another code version fitted is reported (or refitted
    with --refit-stale), never silently mixed with fresh ones."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import robustness
    finally:
        sys.path.pop(0)
    from mcmfh.manifest import source_digest

    tree = tmp_path / "pkg"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.py").write_text("x = 1\n")
    (tree / "sub" / "b.py").write_text("y = 2\n")
    before = source_digest(tree)
    (tree / "sub" / "b.py").write_text("y = 3\n")  # an edit that keeps every option: the digest moves
    assert source_digest.__wrapped__(tree) != before
    (tree / "sub" / "b.py").write_text("y = 2\n")
    assert source_digest.__wrapped__(tree) == before
    (tree / "sub" / "b.py").rename(tree / "b.py")  # same bytes under another module path
    assert source_digest.__wrapped__(tree) != before
    digest = source_digest()
    assert len(digest) == 16
    fresh, old, undated = tmp_path / "fresh.json", tmp_path / "old.json", tmp_path / "undated.json"
    fresh.write_text(json.dumps({"method": "mcmfh", "code_digest": digest}))
    old.write_text(json.dumps({"method": "mcmfh", "code_digest": "0" * 16}))
    undated.write_text(json.dumps({"method": "cca-itq"}))
    assert robustness.cached_row(fresh, refit_stale=True) == ({"method": "mcmfh", "code_digest": digest}, False)
    assert robustness.cached_row(old, refit_stale=False) == ({"method": "mcmfh", "code_digest": "0" * 16}, True)
    assert robustness.cached_row(old, refit_stale=True) == (None, True)
    assert robustness.cached_row(undated, refit_stale=False)[1] is True
    assert robustness.cached_row(tmp_path / "missing.json", refit_stale=False) == (None, False)
    assert robustness.stale_note([]) == ""
    note = robustness.stale_note([f"s/mcmfh/{i}" for i in range(8)])
    assert note.startswith("note: 8 cached row(s)") and "s/mcmfh/5 and 2 more" in note and "--refit-stale" in note


def test_collapse_margin_counts_collapsed_epochs_and_reports_each_pass(tmp_path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import collapse_margin
    finally:
        sys.path.pop(0)
    history = [{"epoch": 1, "collapsed": True}, {"epoch": 2, "collapsed": False}, {"epoch": 3, "collapsed": True},
               {"epoch": 4}]  # an epoch without a dev evaluation does not count  # fmt: skip
    assert collapse_margin.collapsed_share(history) == 2 / 3
    assert collapse_margin.collapsed_share([{"epoch": 1, "loss_total": 0.3}]) is None
    figures = dict(zip(collapse_margin.FIGURES, (0.9, 0.8, 0.2, 0.1), strict=True))
    rows = [
        {"seed": 0, "collapsed_share": 1.0, "rescue": "second pass kept", "rescue_collapsed_share": 0.25,
         "chosen_epoch": 7, "chosen_collapsed": False, "test_collapsed": False, **figures},
        {"seed": 1, "collapsed_share": 0.0, "rescue": None, "rescue_collapsed_share": None, "chosen_epoch": 3,
         "chosen_collapsed": True, "test_collapsed": True, **figures},
    ]  # fmt: skip
    text = collapse_margin.table(rows)
    assert "| 0 | 100% | second pass kept (25%) | 7 | no |" in text
    assert "| 1 | 0% | - | 3 | **yes** |" in text
    assert "| mean | 50% | 1 of 2 ran | | 1 of 2 | 0.900 / 0.800 | 0.200 / 0.100 |" in text
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "collapse_margin.py"), "--features",
                          str(tmp_path), "--setting", "nowhere", "--out", str(tmp_path)],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "invalid choice: 'nowhere'" in bad.stderr


def test_selection_signal_correlates_dev_with_test_and_keeps_health_first(tmp_path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import selection_signal as sig
    finally:
        sys.path.pop(0)

    def epoch(dev_map: float, dev_r10: float, test_map: float, test_r10: float, healthy: bool = True) -> dict:
        figs = (test_map, test_map, test_r10, test_r10)
        return {"dev_map": dev_map, "dev_r10": dev_r10, "healthy": healthy,
                **{f"test_{k}": v for k, v in zip(sig.FIGURES, figs, strict=True)}}  # fmt: skip

    # dev mAP tracks test mAP; dev R@10 runs against test R@10; a collapsed epoch has the best dev mAP of all
    rows = [epoch(0.5, 0.30, 0.40, 0.10), epoch(0.6, 0.20, 0.45, 0.20), epoch(0.7, 0.10, 0.50, 0.30),
            epoch(0.9, 0.50, 0.20, 0.01, healthy=False)]  # fmt: skip
    assert sig.choose(rows, "dev_map") is rows[2]  # health first: the collapsed epoch never wins
    assert sig.choose(rows, "dev_map_recall") is rows[0]  # 0.5 + 0.3 beats 0.7 + 0.1
    assert sig.choose(rows, "oracle") is rows[2]
    assert sig.correlation([1, 2, 3], [2, 2, 2]) == 0.0  # no variation: no signal, not NaN
    out = sig.signal({0: rows, 1: rows}, n_test=100)
    assert out["healthy_epochs"] == 3
    assert out["corr_map"] > 0.99 and out["corr_r10"] < -0.99
    assert out["dev_map"] == [0.5, 0.5, 0.3, 0.3] and out["dev_map_recall"] == [0.4, 0.4, 0.1, 0.1]
    assert abs(out["r10_sampling_error"] - (0.2 * 0.8 / 100) ** 0.5) < 1e-9
    text = sig.table({"vqa-rad": out})
    assert "| vqa-rad | 3 | +1.00 | -1.00 |" in text and "0.500 / 0.500, 0.300 / 0.300" in text
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "selection_signal.py"), "--features",
                          str(tmp_path), "--settings", "vqa-rad,nowhere", "--out", str(tmp_path)],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "unknown nowhere" in bad.stderr
