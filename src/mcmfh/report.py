"""The experiment report: results.md (one table per label set, mean ± std over seeds) and its plots."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.io import atomic_write_text

# (column title, row key) of the per-direction numbers in the table.
_COLUMNS = (
    ("i2t mAP@all", "i2t_map_all"),
    ("i2t tie-aware", "i2t_map_all_tie_aware"),
    ("t2i mAP@all", "t2i_map_all"),
    ("t2i tie-aware", "t2i_map_all_tie_aware"),
    ("i2t mAP@{k} (UCMFH)", "i2t_map_{k}"),
    ("t2i mAP@{k} (UCMFH)", "t2i_map_{k}"),
)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else 0.0)


def _fmt(values: Sequence[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.3f} ± {s:.3f}" if len(values) > 1 else f"{m:.3f}"


def group_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[tuple[str, int], list[Mapping[str, Any]]]]:
    """label set -> (method, bits) -> rows over seeds, in first-seen order."""
    out: dict[str, dict[tuple[str, int], list[Mapping[str, Any]]]] = defaultdict(dict)
    for r in rows:
        out[str(r.get("label_set") or "unnamed")].setdefault((r["method"], int(r["bits"])), []).append(r)
    return out


def results_markdown(rows: Sequence[Mapping[str, Any]], map_k: int = 50) -> str:
    lines = ["# Results", ""]
    lines += [
        "mAP@all ranks the whole database by Hamming distance (cosine for continuous methods), ties broken by "
        "database order; tie-aware = exact expected AP over random orders within ties (McSherry & Najork 2008). "
        f"mAP@{map_k} uses the UCMFH definition (normalised by the relevant items within the top {map_k}). "
        "Every query counts (no relevant item scores 0). `chance` is the exact expected mAP of a random ranking. "
        "Values are mean ± sample std over seeds.",
        "",
    ]
    cols = [(t.format(k=map_k), k.format(k=map_k)) for t, k in _COLUMNS]
    for label_set, groups in group_rows(rows).items():
        first = next(iter(groups.values()))[0]
        lines += [f"## Label set `{label_set}` ({first.get('dataset')}, encoder `{first.get('encoder')}`)", ""]
        header = ["method", "bits", "seeds", *[c for c, _ in cols], "train s", "bytes/item"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for (method, bits), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            cells = [method, str(bits), str(len(rs))]
            cells += [_fmt([float(r[key]) for r in rs]) for _, key in cols]
            cells += [f"{np.mean([float(r['train_seconds']) for r in rs]):.1f}", str(rs[0]["bytes_per_item"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _mean_curves(rs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Curves averaged over seeds (same cutoffs and K for every seed of one method)."""
    out: dict[str, Any] = {}
    for d in ("i2t", "t2i"):
        pr = [r["curves"][d]["pr_curve"] for r in rs]
        pk = [r["curves"][d]["p_at_k"] for r in rs]
        out[d] = {
            "pr_curve": {k: np.mean([p[k] for p in pr], axis=0).tolist() for k in ("recall", "precision")},
            "p_at_k": {k: float(np.mean([p[k] for p in pk])) for k in pk[0]},
        }
    return out


def plot_bits_vs_map(groups: Mapping[tuple[str, int], Sequence[Mapping[str, Any]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mcmfh.evaluate import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    methods = list(dict.fromkeys(m for m, _ in groups))
    for ax, d in zip(axes, ("i2t", "t2i"), strict=True):
        for method in methods:
            bits = sorted(b for m, b in groups if m == method)
            stats = [mean_std([float(r[f"{d}_map_all"]) for r in groups[(method, b)]]) for b in bits]
            ax.errorbar(bits, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bits (continuous: dims)")
        ax.set_ylabel("mAP@all")
        ax.set_title(f"{title} {'image→text' if d == 'i2t' else 'text→image'}")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def write_report(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, plot_bits: int = 16, map_k: int = 50) -> Path:
    """results.md plus, per label set, PR/P@K curves at ``plot_bits`` (all methods) and a bits-vs-mAP plot."""
    from mcmfh.evaluate import plot_curves

    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "results.md", results_markdown(rows, map_k))
    for label_set, groups in group_rows(rows).items():
        curves = {m: _mean_curves(rs) for (m, b), rs in groups.items() if b == plot_bits}
        if curves:
            plot_curves(curves, out_dir, title=f"{plot_bits} bits, {label_set}", suffix=f"_{label_set}_{plot_bits}bits")
        plot_bits_vs_map(groups, out_dir / f"bits_vs_map_{label_set}.png", title=label_set)
    return out_dir / "results.md"
