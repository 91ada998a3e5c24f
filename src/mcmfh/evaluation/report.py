"""The experiment report: results.md (one table per label set, mean ± std over seeds) and its plots."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mcmfh.index.payload import DEFAULT_PAYLOAD
from mcmfh.index.rerank import RERANK_FLOOR
from mcmfh.io import atomic_write_text

if TYPE_CHECKING:
    from mcmfh.method import HashMethod

# (column title, row key) of the per-direction numbers in the table.
# The first two are the headline (tie-aware mAP@all); stable-order figures come last and say so.
_COLUMNS = (
    ("i2t mAP", "i2t_map"),
    ("t2i mAP", "t2i_map"),
    ("i2t paired R@10", "i2t_paired_r10"),
    ("t2i paired R@10", "t2i_paired_r10"),
    ("i2t mAP@{k} (UCMFH)", "i2t_map_{k}_tie_aware"),
    ("t2i mAP@{k} (UCMFH)", "t2i_map_{k}_tie_aware"),
    ("i2t mAP@all stable order", "i2t_map_all"),
    ("t2i mAP@all stable order", "t2i_map_all"),
)
# A row whose stable-order and tie-aware mAP@all differ by more than this is flagged: its ranking is mostly ties.
STABLE_GAP_FLAG = 0.01


def headline(row: Mapping[str, Any], direction: str) -> float:
    """The headline figure of a row (tie-aware mAP@all); rows written before it had its own key fall back."""
    return float(row.get(f"{direction}_map", row[f"{direction}_map_all_tie_aware"]))


def row_flags(rs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Warnings for one (method, bits) group: collapsed codes (mcmfh.evaluation.code_health rule) in any seed, and a
    mean gap
    between stable-order and tie-aware mAP above ``STABLE_GAP_FLAG``."""
    flags = []
    collapsed = sum(bool((r.get("code_health") or {}).get("collapsed")) for r in rs)
    if collapsed:
        flags.append(f"**collapsed** ({collapsed}/{len(rs)} seeds)")
    for d in ("i2t", "t2i"):
        gap = np.mean([float(r[f"{d}_map_all"]) - headline(r, d) for r in rs])
        if abs(gap) > STABLE_GAP_FLAG:
            flags.append(f"{d} stable − tie-aware {gap:+.3f}")
    return flags


def _health_cell(rs: Sequence[Mapping[str, Any]]) -> str:
    """Mean distinct codes and effective bits, image / text, over seeds ('–' for continuous methods)."""
    hs = [r.get("code_health") for r in rs]
    if not all(hs):
        return "–"
    cells = []
    for mod in ("image", "text"):
        distinct = np.mean([h[mod]["distinct"] for h in hs])
        eff = np.mean([h[mod]["effective_bits"] for h in hs])
        cells.append(f"{distinct:.0f} ({eff:.1f} b)")
    return " / ".join(cells)


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


def run_info(config: str | Path | None = None, cwd: str | Path | None = None) -> dict[str, str]:
    """When and with what a report was made: UTC date, mcmfh version, git commit of ``cwd`` (else "unknown")."""
    import datetime
    import subprocess

    from mcmfh import __version__

    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
        commit = done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"  # no git, or not a checkout: the report says so rather than failing
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mcmfh_version": __version__,
        "git_commit": commit,
    }
    if config is not None:
        info["config"] = str(config)
    return info


def _chance_check(groups: Mapping[tuple[str, int], Sequence[Mapping[str, Any]]]) -> list[str]:
    """One line saying whether every hashing row's mean mAP@all beats the `chance` row at the same bits."""
    chance = {b: rs for (m, b), rs in groups.items() if _is_chance(m)}
    if not chance:
        return []
    below = []
    for (method, bits), rs in groups.items():
        if _is_chance(method) or rs[0].get("continuous") or bits not in chance:
            continue
        for d in ("i2t", "t2i"):
            ref = mean_std([headline(r, d) for r in chance[bits]])[0]
            if mean_std([headline(r, d) for r in rs])[0] <= ref:
                below.append(f"{method} {bits} bits {d}")
    verdict = "every hashing row is above chance" if not below else "NOT above chance: " + ", ".join(below)
    return [f"Chance check (mean tie-aware mAP vs `chance` at the same bits): {verdict}.", ""]


def _registered(method: str) -> type[HashMethod] | None:
    """The class of a row's method, whose declarations the report reads (None: a method not registered here)."""
    from mcmfh.factory import available_methods, method_class

    return method_class(method) if method in available_methods() else None


def _is_chance(method: str) -> bool:
    cls = _registered(method)
    return cls is not None and cls.reports_exact_chance


def _ablates_mcmfh(method: str) -> bool:
    cls = _registered(method)
    return cls is not None and cls.ablation_of == "mcmfh"


def _ablation_table(groups: Mapping[tuple[str, int], Sequence[Mapping[str, Any]]]) -> list[str]:
    """Each ablation (a method declaring ``ablation_of = "mcmfh"``) minus ``mcmfh`` at the same bits; a difference
    within one std is no effect."""
    pairs = [(m, b) for m, b in groups if _ablates_mcmfh(m) and ("mcmfh", b) in groups]
    if not pairs:
        return []
    rows = [r for p in pairs + [("mcmfh", b) for _, b in pairs] for r in groups[p]]
    # the study modes too, where every compared row has them (the components in the setting they were made for)
    dirs = ["i2t", "t2i"] + [m for m in ("i2s", "t2s") if all(f"{m}_map" in r for r in rows)]
    lines = [
        "Ablations: Δ = ablation − mcmfh in mean tie-aware mAP (± the larger of the two seed stds); "
        "an effect only when |Δ| is strictly greater than that std."
        + (" i2s / t2s: the fused study code (evaluation modes below)." if len(dirs) > 2 else ""),
        "",
        "| ablation | bits | " + " | ".join(f"Δ {d}" for d in dirs) + " | verdict |",
        "|" + "---|" * (len(dirs) + 3),
    ]
    for method, bits in pairs:
        cells, verdicts = [], []
        for d in dirs:
            ma, sa = mean_std([headline(r, d) for r in groups[(method, bits)]])
            mm, sm = mean_std([headline(r, d) for r in groups[("mcmfh", bits)]])
            # Compared as printed (3 decimals): "+0.004 ± 0.004" must read "within std", whatever the 4th decimal.
            delta, std = round(ma - mm, 3), round(max(sa, sm), 3)
            cells.append(f"{delta:+.3f} ± {std:.3f}")
            if std == 0.0:
                verdicts.append(f"{d}: one seed, no std")
            elif not abs(delta) > std:
                verdicts.append(f"{d}: within std")
            else:
                verdicts.append(f"{d}: {'ablation better' if delta > 0 else 'mcmfh better'}")
        lines.append(f"| {method} | {bits} | {' | '.join(cells)} | {'; '.join(verdicts)} |")
    return [*lines, ""]


def _pair(rs: Sequence[Mapping[str, Any]], key: str) -> str:
    """Mean i2t / t2i of ``<dir>_<key>`` over rows (3 decimals)."""
    return " / ".join(f"{np.mean([float(r[f'{d}_{key}']) for r in rs]):.3f}" for d in ("i2t", "t2i"))


def two_stage_table(
    groups: Mapping[tuple[str, int], Sequence[Mapping[str, Any]]], order: Mapping[str, int]
) -> list[str]:
    """One row per (method, bits, payload) of the rows that carry two-stage figures (``mcmfh.evaluation.rerank_eval``),
    next to
    their one-stage ones; groups whose rows were saved before two-stage existed are listed as not computed."""
    payloads = list(
        dict.fromkeys(p for rs in groups.values() for r in rs for p in (r.get("rerank") or {}).get("payloads", []))
    )
    if not payloads:
        return []
    settings = next(r["rerank"] for rs in groups.values() for r in rs if r.get("rerank"))
    lines = [
        "### Two-stage (re-scored Hamming candidates)",
        "",
        f"What a search shows: stage 1 takes the first max({RERANK_FLOOR}, {settings['oversample']:g} × k) items in "
        f"Hamming order (k = {settings['k']}), stage 2 orders them by the payload's cosine to the query's own "
        "relaxed output; the rest of the database follows in Hamming order (`mcmfh.evaluation.rerank_eval`). mAP is "
        "tie-aware mAP@all, ties only where similarity and distance are both equal; *every item re-scored* is the "
        "payload's own ceiling. P@K cells are means, one-stage → two-stage. bytes/item = code + payload. Methods "
        "without a relaxed output (continuous, `chance`, `ucmfh`) have no row.",
        "",
    ]
    header = [
        "method", "bits", "seeds", "payload", "bytes/item", "one-stage mAP i2t", "one-stage mAP t2i",
        "two-stage mAP i2t", "two-stage mAP t2i", "every item re-scored i2t / t2i", "P@10 i2t / t2i",
        "P@20 i2t / t2i", "candidates/query i2t / t2i",
    ]  # fmt: skip
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (method, bits), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], order[kv[0][0]])):
        if any(r.get("continuous") for r in rs):
            continue
        old = [r for r in rs if "rerank" not in r]  # saved before two-stage existed
        for p in payloads:
            have = [r for r in rs if f"i2t_map_2s_{p}" in r]
            if not have:
                if old:
                    lines.append(
                        f"| {method} | {bits} | {len(rs)} | {p} | not computed: rows saved before "
                        "two-stage; rerun the experiment to add them |" + " |" * (len(header) - 5)
                    )
                continue
            seeds = str(len(have)) if len(have) == len(rs) else f"{len(have)} of {len(rs)}"
            cells = [method, str(bits), seeds, p, f"{have[0]['bytes_per_item']} + {have[0][f'bytes_2s_{p}']}"]
            cells += [_fmt([headline(r, d) for r in have]) for d in ("i2t", "t2i")]
            cells += [_fmt([float(r[f"{d}_map_2s_{p}"]) for r in have]) for d in ("i2t", "t2i")]
            cells.append(_pair(have, f"map_2s_{p}_all"))
            for k in (10, 20):
                one = _pair(have, f"p{k}") if all(f"{d}_p{k}" in r for r in have for d in ("i2t", "t2i")) else "–"
                cells.append(f"{one} → {_pair(have, f'p{k}_2s_{p}')}")
            cells.append(
                " / ".join(f"{np.mean([float(r[f'{d}_candidates_2s_{p}']) for r in have]):.0f}" for d in ("i2t", "t2i"))
            )
            lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def modes_table(groups: Mapping[tuple[str, int], Sequence[Mapping[str, Any]]], order: Mapping[str, int]) -> list[str]:
    """Tie-aware mAP (and, for studies, P@10) per evaluation mode (``mcmfh.evaluation.study_eval``) of the rows that
    have more
    than i2t / t2i: for the study modes the fused study code (where the method has one) and the two no-fusion
    rules over members' codes."""
    extra = [m for m in ("i2s", "t2s", "i2i", "t2t") if any(f"{m}_map" in r for rs in groups.values() for r in rs)]
    if not extra:
        return []
    cols: list[tuple[str, str]] = [("i2t", "i2t_map"), ("t2i", "t2i_map")]
    for m in extra:
        if m in ("i2s", "t2s"):
            cols += [(f"{m} fused", f"{m}_fused_map"), (f"{m} fused 2s", f"{m}_fused_2s_map"),
                     (f"{m} min", f"{m}_min_map"), (f"{m} sum", f"{m}_sum_map"), (f"{m} P@10 fused", f"{m}_fused_p10"),
                     (f"{m} P@10 fused 2s", f"{m}_fused_2s_p10")]  # fmt: skip
        else:
            cols.append((m, f"{m}_map"))
    lines = [
        "### Evaluation modes",
        "",
        "Tie-aware mAP@all (P@10: tie-aware expected precision of the first 10), mean ± std over seeds. Queries "
        "are coded alone in every mode. *i2s / t2s*: an image / a text query against the database studies "
        "(relevant: shares a label with any member). *fused*: the method's own study code (one code per study, "
        f"bits / 8 bytes); *fused 2s*: two-stage search over it as an archive runs it (the first {RERANK_FLOOR} "
        f"studies in Hamming order re-scored by the study head's relaxed output at {DEFAULT_PAYLOAD}); *min*: "
        "the smallest distance to any member's image or text code; *sum*: the smallest over members of image + "
        "text distance (no fusion: 2 × bits / 8 bytes per member). A study that holds the query's own item is left"
        " out of its ranking. – : the method has no study codes.",
        "",
    ]
    header = ["method", "bits", "seeds", *[c for c, _ in cols]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (method, bits), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], order[kv[0][0]])):
        if not any(f"{extra[0]}_map" in r for r in rs):
            continue
        cells = [method, str(bits), str(len(rs))]
        cells += [_fmt([float(r[k]) for r in rs]) if all(r.get(k) is not None for r in rs) else "–" for _, k in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def results_markdown(rows: Sequence[Mapping[str, Any]], map_k: int = 50, info: Mapping[str, str] | None = None) -> str:
    lines = ["# Results", ""]
    if info:
        lines += [" · ".join(f"{k.replace('_', ' ')}: {v}" for k, v in info.items()), ""]
    lines += [
        "mAP = tie-aware mAP@all: the whole database ranked by Hamming distance (cosine for continuous methods), "
        "as the exact expected AP over random orders within tied distances (McSherry & Najork 2008), so it does "
        f"not depend on the database order. mAP@{map_k} uses the UCMFH definition (normalised by the relevant "
        f"items within the top {map_k}), also tie-aware. *Stable order* columns break ties by database order; "
        "they are secondary (they reward collapsed codes when the database is sorted by label). "
        "Every query counts (no relevant item scores 0). `chance` is the exact expected mAP of a random ranking. "
        "*Paired R@10* is instance-level and cannot be gamed by collapse: in the test split as a 1:1 gallery "
        "(identical captions are one text), the tie-aware probability that an image's own report is in its top 10 "
        "(i2t), or one of a report's own images (t2i) (`mcmfh.evaluation.paired`, docs/evaluation.md). "
        "Values are mean ± sample std over seeds. Codes: mean distinct database codes (effective bits = entropy "
        "of the code distribution), image / text. Flags: **collapsed** when a seed's codes fail the code-health "
        "rule (effective bits < 50% of min(bits, log2 N), or one code holding > 25% of the items; "
        f"`mcmfh.evaluation.code_health`), and when stable-order and tie-aware mAP differ by more than "
        f"{STABLE_GAP_FLAG}.",
        "",
    ]
    cols = [(t.format(k=map_k), k.format(k=map_k)) for t, k in _COLUMNS]
    for label_set, groups in group_rows(rows).items():
        first = next(iter(groups.values()))[0]
        lines += [f"## Label set `{label_set}` ({first.get('dataset')}, encoder `{first.get('encoder')}`)", ""]
        header = ["method", "bits", "seeds", *[c for c, _ in cols], "codes i / t", "train s", "bytes/item", "flags"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        order = {m: i for i, m in enumerate(dict.fromkeys(m for m, _ in groups))}  # the config's method order
        for (method, bits), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], order[kv[0][0]])):
            cells = [method, str(bits), str(len(rs))]
            cells += [_fmt([_value(r, key) for r in rs]) for _, key in cols]
            cells += [_health_cell(rs)]
            cells += [f"{np.mean([float(r['train_seconds']) for r in rs]):.1f}", str(rs[0]["bytes_per_item"])]
            cells += ["; ".join(row_flags(rs))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += _chance_check(groups) + _ablation_table(groups) + two_stage_table(groups, order)
        lines += modes_table(groups, order)
    return "\n".join(lines)


def _value(row: Mapping[str, Any], key: str) -> float:
    """A row's figure; the headline keys fall back to their older names (rows saved before they existed)."""
    if key in row:
        return float(row[key])
    old = {"i2t_map": "i2t_map_all_tie_aware", "t2i_map": "t2i_map_all_tie_aware"}
    return float(row.get(old.get(key, key), float("nan")))


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

    from mcmfh.evaluation.evaluate import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    methods = list(dict.fromkeys(m for m, _ in groups))
    for ax, d in zip(axes, ("i2t", "t2i"), strict=True):
        for method in methods:
            bits = sorted(b for m, b in groups if m == method)
            stats = [mean_std([headline(r, d) for r in groups[(method, b)]]) for b in bits]
            style = "--" if groups[(method, bits[0])][0].get("continuous") else "-"  # ceilings: dashed
            ys, err = [s[0] for s in stats], [s[1] for s in stats]
            ax.errorbar(bits, ys, yerr=err, marker="o", capsize=3, linestyle=style, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bits (continuous, dashed: the code length of the row)")
        ax.set_ylabel("mAP (tie-aware)")
        ax.set_title(f"{title} {'image→text' if d == 'i2t' else 'text→image'}")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def write_report(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    plot_bits: int = 16,
    map_k: int = 50,
    info: Mapping[str, str] | None = None,
) -> Path:
    """results.md plus, per label set, PR/P@K curves at ``plot_bits`` (all methods) and a bits-vs-mAP plot.
    ``info`` (see ``run_info``) becomes the header line: date, mcmfh version, git commit."""
    from mcmfh.evaluation.evaluate import plot_curves

    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "results.md", results_markdown(rows, map_k, info))
    for label_set, groups in group_rows(rows).items():
        curves = {m: _mean_curves(rs) for (m, b), rs in groups.items() if b == plot_bits}
        if curves:
            plot_curves(curves, out_dir, title=f"{plot_bits} bits, {label_set}", suffix=f"_{label_set}_{plot_bits}bits")
        plot_bits_vs_map(groups, out_dir / f"bits_vs_map_{label_set}.png", title=label_set)
    return out_dir / "results.md"
