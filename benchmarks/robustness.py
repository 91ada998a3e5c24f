"""Robustness suite: MCMFH against every unsupervised baseline on settings that break fragile recipes; one command.

    python benchmarks/robustness.py --features FEATURE_CACHE --data-root ../shared/data/medpix2 \
        --vqa-rad ../shared/data/vqa_rad --out DIR

``FEATURE_CACHE`` is the MedPix 2.0 feature cache (``mcmfh encode --dataset medpix2 ... --encoder offline``); the
built-in demo set and VQA-RAD are encoded under ``DIR`` once. Settings (all from data we have, all fixed by seed 0):

  medpix-full        MedPix 2.0 as is (label set ``labels``)
  medpix-train60     training on a fixed case-level subset of about 60 train pairs (dev, test unchanged)
  medpix-train150    the same with about 150 pairs
  medpix-train300    ... about 300 pairs
  medpix-train600    ... about 600 pairs
  medpix-coarse      the 7 coarse labels (``labels_coarse``: denser relevance)
  medpix-dominant70  items subsampled per split so that the most common tag covers about 70% of them
  medpix-sorted      every split's rows sorted by label: the database order follows the labels
  medpix-shared-caption  every image of a case carries the case's first caption (many images, one text)
  stress-grouped     a held-out failure's shape: 588 items, 278 training pairs, the 15 most common tags only,
                     rows sorted by label
  stress-panels      the other held-out failure's shape: about 60 training pairs, 13 tags with one on about 64% of
                     the items (near-chance headroom), every image of a case sharing one caption
  vqa-rad            VQA-RAD (314 images, QA text, organ / modality tags), its case-level split: a small archive
                     with few coarse labels, where 16-bit codes fall onto a handful of buckets
  demo               the built-in synthetic set of ``mcmfh demo`` (600 items)

``--methods`` takes method names and the groups ``default`` (mcmfh, cca-itq, ucmfh), ``deep`` (djsrh, jdsh, dgcpn,
ucch), ``ablations`` (mcmfh-no-moe, -no-dv, -no-gateloss, -no-fusion), ``unsupervised`` (default + deep) and
``supervised`` (dcmht-head, dsph-head, tripah-head, mcmfh-supervised); the default is
``unsupervised,ablations``. The deep baselines run with the epoch budgets of ``configs/medpix2-deep-baselines.yaml``.
Supervised methods are judged apart: MCMFH (it reads no labels) against the unsupervised baselines, and
``mcmfh-supervised`` against the supervised heads.

Every row is the protocol of ``mcmfh experiment``: queries = test, database = train + dev, fit on train, model choice
on dev (``mcmfh.training.selection``). Each row shows tie-aware label mAP, the instance-level paired R@10
(``mcmfh.evaluation.paired``:
does an image find its own report in the test split?), code health and the flags. Rows are cached in ``DIR/rows``
(keyed by setting, method, seed, options), so a rerun only fits new rows; each row records the digest of the package
source that fitted it (``mcmfh.manifest.source_digest``), and a rerun names the cached rows that other code fitted
(an edit of the training code keeps their key) in a note under the table; ``--refit-stale`` refits them. Writes
``DIR/robustness.json`` and ``DIR/robustness.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.evaluation.evaluate import evaluate_method, summary
from mcmfh.evaluation.report import mean_std, row_flags
from mcmfh.factory import create_method
from mcmfh.features import FeatureSet
from mcmfh.io import atomic_write_json, atomic_write_text
from mcmfh.manifest import fingerprint, source_digest
from mcmfh.training.runs import fit_method

METHODS = ("mcmfh", "cca-itq", "ucmfh")
# The deep baselines of docs/baselines.md, an option (``--methods default,deep``): at about 1-4 minutes a fit on two
# shared cores they would multiply the suite's hour by ~7, so the default list stays the three above.
DEEP_UNSUPERVISED = ("djsrh", "jdsh", "dgcpn", "ucch")
SUPERVISED = ("dcmht-head", "dsph-head", "tripah-head", "mcmfh-supervised")  # read labels: shown, not in the verdict
ABLATIONS = ("mcmfh-no-moe", "mcmfh-no-dv", "mcmfh-no-gateloss", "mcmfh-no-fusion")
METHOD_GROUPS = {
    "default": METHODS,
    "deep": DEEP_UNSUPERVISED,
    "unsupervised": (*METHODS, *DEEP_UNSUPERVISED),
    "ablations": ABLATIONS,
    "supervised": SUPERVISED,
}
DEFAULT_METHODS = "unsupervised,ablations"
# The epoch budgets of configs/medpix2-deep-baselines.yaml (``--options`` replaces a method's entry).
DEEP_OPTIONS: dict[str, dict[str, Any]] = {
    **{m: {"epochs": 60, "eval_every": 2} for m in ("djsrh", "jdsh", "dgcpn", *SUPERVISED[:3])},
    "ucch": {"epochs": 300, "eval_every": 10},
}
SETTINGS = (
    "medpix-full",
    "medpix-train60",
    "medpix-train150",
    "medpix-train300",
    "medpix-train600",
    "medpix-coarse",
    "medpix-dominant70",
    "medpix-sorted",
    "medpix-shared-caption",
    "stress-grouped",
    "stress-panels",
    "vqa-rad",
    "demo",
)
PANELS_TAGS, PANELS_SHARE = 13, 0.64  # the held-out CT-panel set: 13 finding / severity tags, one on 64% of items
PANELS_SPLIT = (("train", 60), ("dev", 30), ("test", 90))  # items per split, whole cases
COARSE = "labels_coarse"
SUITE_SEED = 0  # every subset is drawn with this seed: the suite is one fixed set of problems


def _case(item_id: str) -> str:
    return item_id.split("_", 1)[0]  # MedPix ids are <case>_<image>: subsets keep a case's images together


def _train_subset(fs: FeatureSet, n_pairs: int) -> FeatureSet:
    rng = np.random.default_rng(SUITE_SEED)
    train = np.flatnonzero(fs.split == "train")
    cases = sorted({_case(fs.ids[i]) for i in train})
    keep: set[str] = set()
    count = 0
    by_case: dict[str, int] = {}
    for i in train:
        by_case[_case(fs.ids[i])] = by_case.get(_case(fs.ids[i]), 0) + 1
    for c in rng.permutation(cases):
        if count >= n_pairs:
            break
        keep.add(str(c))
        count += by_case[str(c)]
    mask = (fs.split != "train") | np.array([_case(i) in keep for i in fs.ids])
    return fs.subset(mask)


def _relabel(fs: FeatureSet, data_root: Path, label_set: str) -> FeatureSet:
    from mcmfh.data import load_dataset

    ds = load_dataset("medpix2", data_root, label_set=label_set)
    vocab = list(ds.label_vocab)
    col = {lab: j for j, lab in enumerate(vocab)}
    by_id = {r.id: r.labels for r in ds.records}
    labels = np.zeros((len(fs), len(vocab)), np.uint8)
    for i, item in enumerate(fs.ids):
        for lab in by_id[item]:
            labels[i, col[lab]] = 1
    return FeatureSet(fs.ids, fs.image, fs.text, labels, vocab, fs.split, fs.has_image, {**fs.manifest,
                      "label_set": label_set})  # fmt: skip


def _dominant(fs: FeatureSet, share: float) -> FeatureSet:
    rng = np.random.default_rng(SUITE_SEED)
    top = int(np.argmax(fs.labels.sum(0)))
    keep = []
    for split in ("train", "dev", "test"):
        idx = np.flatnonzero(fs.split == split)
        with_top = idx[fs.labels[idx, top] > 0]
        without = idx[fs.labels[idx, top] == 0]
        n_without = min(len(without), int(round(len(with_top) * (1 - share) / share)))
        keep += [*with_top, *rng.choice(without, n_without, replace=False)]
    return fs.subset(np.sort(np.array(keep)))


def _sorted_by_label(fs: FeatureSet) -> FeatureSet:
    # Lexicographic on the multi-hot rows, most frequent tag first: items sharing labels end up next to each other.
    cols = np.argsort(-fs.labels.sum(0), kind="stable")
    order = np.lexsort(fs.labels[:, cols].T[::-1])[::-1]
    return fs.subset(order)


def _grouped_stress(fs: FeatureSet) -> FeatureSet:
    rng = np.random.default_rng(SUITE_SEED)
    tags = np.argsort(-fs.labels.sum(0), kind="stable")[:15]
    labels = fs.labels[:, tags]
    ok = np.flatnonzero(labels.any(1))
    cases = sorted({_case(fs.ids[i]) for i in ok})
    chosen: list[int] = []
    for c in rng.permutation(cases):
        chosen += [i for i in ok if _case(fs.ids[i]) == c]
        if len(chosen) >= 588:
            break
    chosen = chosen[:588]
    split = np.array(["train"] * 278 + ["dev"] * 100 + ["test"] * (len(chosen) - 378))
    sub = FeatureSet(
        [fs.ids[i] for i in chosen], fs.image[chosen], fs.text[chosen], labels[chosen],
        [fs.label_vocab[t] for t in tags], split, fs.has_image[chosen], {**fs.manifest, "label_set": "top15"},
    )  # fmt: skip
    return _sorted_by_label(sub)


def _shared_caption(fs: FeatureSet) -> FeatureSet:
    """Every item's text replaced by the text of its case's first item (in row order)."""
    first: dict[str, int] = {}
    for i, item in enumerate(fs.ids):
        first.setdefault(_case(item), i)
    text = fs.text[[first[_case(item)] for item in fs.ids]]
    return FeatureSet(fs.ids, fs.image, text, fs.labels, fs.label_vocab, fs.split, fs.has_image,
                      {**fs.manifest, "variant": "shared-caption"}, fs.study)  # fmt: skip


def _panels(fs: FeatureSet) -> FeatureSet:
    rng = np.random.default_rng(SUITE_SEED)
    tags = np.argsort(-fs.labels.sum(0), kind="stable")[:PANELS_TAGS]
    labels = fs.labels[:, tags]
    ok = np.flatnonzero(labels.any(1))
    top = labels[ok, 0] > 0
    n_other = int(round(top.sum() * (1 - PANELS_SHARE) / PANELS_SHARE))
    pool = np.sort(np.concatenate([ok[top], rng.choice(ok[~top], min(n_other, int((~top).sum())), replace=False)]))
    by_case: dict[str, list[int]] = {}
    for i in pool:
        by_case.setdefault(_case(fs.ids[i]), []).append(int(i))
    chosen: list[int] = []
    split: list[str] = []
    cases = iter(rng.permutation(sorted(by_case)))
    for name, size in PANELS_SPLIT:
        taken = 0
        while taken < size:
            members = by_case[str(next(cases))]
            chosen += members
            split += [name] * len(members)
            taken += len(members)
    sub = FeatureSet([fs.ids[i] for i in chosen], fs.image[chosen], fs.text[chosen], labels[chosen],
                     [fs.label_vocab[t] for t in tags], np.array(split), fs.has_image[chosen],
                     {**fs.manifest, "label_set": f"top{PANELS_TAGS}"})  # fmt: skip
    return _shared_caption(sub)


def _encoded(out: Path, name: str, dataset: str, root: Path) -> FeatureSet:
    from mcmfh.data import load_dataset
    from mcmfh.encode_features import encode_dataset
    from mcmfh.encoders import get_encoder

    return encode_dataset(load_dataset(dataset, root), get_encoder("offline"), out / f"{name}-features")


def _demo(out: Path) -> FeatureSet:
    from mcmfh.data.synthetic import make_synthetic_dataset

    root = out / "demo-data"
    if not (root / "synthetic.csv").is_file():
        make_synthetic_dataset(root, n=600, seed=0)
    return _encoded(out, "demo", "csv", root)


def build_setting(
    name: str, features: FeatureSet, data_root: Path | None, out: Path, vqa_rad: Path | None = None
) -> FeatureSet:
    builders: dict[str, Callable[[], FeatureSet]] = {
        "medpix-full": lambda: features,
        "medpix-train60": lambda: _train_subset(features, 60),
        "medpix-train150": lambda: _train_subset(features, 150),
        "medpix-train300": lambda: _train_subset(features, 300),
        "medpix-train600": lambda: _train_subset(features, 600),
        "medpix-coarse": lambda: _relabel(features, _need(data_root, "medpix-coarse needs --data-root"), COARSE),
        "medpix-dominant70": lambda: _dominant(features, 0.7),
        "medpix-sorted": lambda: _sorted_by_label(features),
        "medpix-shared-caption": lambda: _shared_caption(features),
        "stress-grouped": lambda: _grouped_stress(features),
        "stress-panels": lambda: _panels(features),
        "vqa-rad": lambda: _encoded(out, "vqa-rad", "csv", _need(vqa_rad, "vqa-rad needs --vqa-rad")),
        "demo": lambda: _demo(out),
    }
    return builders[name]()


def _need(folder: Path | None, message: str) -> Path:
    if folder is None:
        sys.exit(f"{message} (the dataset's folder, e.g. under ../shared/data)")
    return folder


def expand_methods(spec: str) -> list[str]:
    """``"default,deep,lsh"`` -> method names in order, groups expanded, duplicates dropped; unknown -> exit."""
    from mcmfh.factory import available_methods

    names: list[str] = []
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        names.extend(METHOD_GROUPS.get(item, (item,)))
    unknown = sorted(set(names) - set(available_methods()))
    if unknown or not names:
        sys.exit(f"--methods: unknown {unknown or spec!r}; groups {sorted(METHOD_GROUPS)} or registered methods")
    return list(dict.fromkeys(names))


def run_row(fs: FeatureSet, setting: str, method: str, bits: int, seed: int, options: dict[str, Any]) -> dict:
    m, log = fit_method(fs, method, bits, seed, options)
    s = summary(evaluate_method(m, fs))
    row = {k: v for k, v in s.items() if k not in ("i2t", "t2i")}
    row.update(setting=setting, options=options, train_seconds=float(log["train_seconds"]), n_train=log["n_train"])
    row["code_digest"] = source_digest()  # which code fitted it: a cached row outlives edits that keep the recipe
    if log.get("chosen_epoch") is not None:  # the deep baselines' dev-chosen epoch
        row["chosen_epoch"] = log["chosen_epoch"]
    for stage in ("stage1", "stage2"):
        if isinstance(log.get(stage), dict):
            row[f"{stage}_chosen_epoch"] = log[stage].get("chosen_epoch")
    rescue = log["stage2"].get("rescue") if isinstance(log.get("stage2"), dict) else None
    if rescue:  # MCMFH's collapse rescue ran: which pass was kept (mcmfh.model.trainer)
        row["stage2_rescue"] = "codes" if rescue["chosen"] else "first"
    return row


def cached_row(path: Path, refit_stale: bool) -> tuple[dict | None, bool]:
    """A cached row and whether other code fitted it. The cache key is the method's recipe (its options), not its
    code: a training-code edit that keeps the options leaves the key, and the row, as they were. A stale row is used
    and reported, or (``refit_stale``) refitted; a row from before digests were recorded counts as stale."""
    if not path.is_file():
        return None, False
    row = json.loads(path.read_text(encoding="utf-8"))
    stale = row.get("code_digest") != source_digest()
    return (None if stale and refit_stale else row), stale


def stale_note(stale: list[str]) -> str:
    """One line naming the cached rows that other code fitted (empty when there are none)."""
    if not stale:
        return ""
    shown = ", ".join(stale[:6]) + (f" and {len(stale) - 6} more" if len(stale) > 6 else "")
    return (f"note: {len(stale)} cached row(s) were fitted by other code than this checkout's, or before rows recorded "
            f"it ({shown}); they are shown as they were; --refit-stale refits them")  # fmt: skip


def _cell(rs: list[dict], key: str) -> str:
    return "{:.3f} ± {:.3f}".format(*mean_std([float(r[key]) for r in rs]))


def markdown(rows: list[dict], settings: list[str], methods: list[str]) -> str:
    lines = [
        "| setting | method | i2t mAP | t2i mAP | paired R@10 i2t | paired R@10 t2i | stable i2t / t2i "
        "| codes image / text (eff. bits) | flags |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for setting in settings:
        for method in methods:
            rs = [r for r in rows if r["setting"] == setting and r["method"] == method]
            if not rs:
                continue
            stable = f"{np.mean([r['i2t_map_all'] for r in rs]):.3f} / {np.mean([r['t2i_map_all'] for r in rs]):.3f}"
            h = [r["code_health"] for r in rs if r.get("code_health")]
            codes = " / ".join(
                f"{np.mean([x[m]['distinct'] for x in h]):.0f} ({np.mean([x[m]['effective_bits'] for x in h]):.1f})"
                for m in ("image", "text")
            ) if h else "–"  # fmt: skip
            lines.append(
                f"| {setting} | {method} | {_cell(rs, 'i2t_map')} | {_cell(rs, 't2i_map')} | "
                f"{_cell(rs, 'i2t_paired_r10')} | {_cell(rs, 't2i_paired_r10')} | {stable} | {codes} | "
                f"{'; '.join(row_flags(rs))} |"
            )
    return "\n".join(lines)


FIGURES = (("i2t_map", "mAP i2t"), ("t2i_map", "mAP t2i"), ("i2t_paired_r10", "R@10 i2t"),
           ("t2i_paired_r10", "R@10 t2i"))  # fmt: skip


def verdict(rows: list[dict], settings: list[str], against: str = "mcmfh", supervised: bool = False) -> list[str]:
    """Per setting: is ``against`` at least level (within one seed std of the better) with the best other method of
    its kind (unsupervised, or with ``supervised`` the supervised ones) in label mAP and paired R@10, both
    directions, and is any of its seeds collapsed?"""
    out = []
    for setting in settings:
        by_method: dict[str, list[dict]] = {}
        for r in rows:
            if r["setting"] == setting and (r["method"] in SUPERVISED) == supervised and r["method"] not in ABLATIONS:
                by_method.setdefault(r["method"], []).append(r)
        if against not in by_method or len(by_method) < 2:
            continue
        own = by_method.pop(against)
        collapsed = sum(bool((r.get("code_health") or {}).get("collapsed")) for r in own)
        parts, behind = [], []
        for key, label in FIGURES:
            mean, std = mean_std([float(r[key]) for r in own])
            best_m, best_rs = max(by_method.items(), key=lambda kv: np.mean([float(r[key]) for r in kv[1]]))
            other, other_std = mean_std([float(r[key]) for r in best_rs])
            parts.append(f"{label} ×{mean / other:.2f} vs {best_m}" if other > 0 else f"{label} –")
            if mean < other - max(std, other_std):
                # A rival's label mAP from collapsed codes is the trap of reference/evaluation.md: said, not hidden.
                rival_collapsed = sum(bool((r.get("code_health") or {}).get("collapsed")) for r in best_rs)
                note = f", collapsed {rival_collapsed}/{len(best_rs)}" if rival_collapsed else ""
                behind.append(f"{label} (best {best_m}{note})")
        state = "level or ahead" if not behind else "BEHIND in " + ", ".join(behind)
        flag = f"; {collapsed}/{len(own)} seeds collapsed" if collapsed else "; no collapsed seed"
        out.append(f"- {setting}: {against} {state}{flag} ({'; '.join(parts)})")
    return out


def add_data_arguments(ap: argparse.ArgumentParser) -> None:
    """The inputs ``build_setting`` reads, and the output folder (settings that encode a dataset write under it)."""
    ap.add_argument("--features", type=Path, required=True, help="MedPix 2.0 feature cache (offline encoder)")
    ap.add_argument("--data-root", type=Path, default=None, help="MedPix 2.0 folder (for labels_coarse)")
    ap.add_argument("--vqa-rad", type=Path, default=None, help="VQA-RAD folder (vqa_rad.csv + images), for vqa-rad")
    ap.add_argument("--out", type=Path, required=True)


def add_method_arguments(ap: argparse.ArgumentParser, methods: str, seeds: str) -> None:
    """One method fitted per seed (the per-seed benchmarks beside this suite): which, seeds, code length, options."""
    ap.add_argument("--method", default="mcmfh", help=methods)
    ap.add_argument("--seeds", default=seeds)
    ap.add_argument("--bits", type=int, default=16)
    ap.add_argument("--options", default="{}", help="JSON {option: value} for the method")


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--options`` of ``add_method_arguments``, on one torch thread per fit unless they say otherwise."""
    return {"num_threads": 1, **json.loads(args.options)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(ap)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--bits", type=int, default=16)
    ap.add_argument("--options", default="{}", help="JSON {method: {option: value}}, e.g. to measure a change")
    ap.add_argument("--refit-stale", action="store_true", help="refit cached rows that other code fitted")
    args = ap.parse_args(argv)
    settings, methods = args.settings.split(","), expand_methods(args.methods)
    seeds = [int(s) for s in args.seeds.split(",")]
    all_options = {**DEEP_OPTIONS, **json.loads(args.options)}
    bad = sorted(set(settings) - set(SETTINGS))
    if bad:
        sys.exit(f"--settings: unknown {bad}; known: {list(SETTINGS)}")
    features = FeatureSet.load(args.features)
    rows: list[dict] = []
    stale: list[str] = []
    for setting in settings:
        fs = None
        for method in methods:
            options = all_options.get(method, {})
            for seed in seeds:
                key = fingerprint(
                    setting,
                    method,
                    args.bits,
                    seed,
                    options,
                    features.manifest.get("cache_key"),
                    create_method(method, args.bits, seed, **options).recipe(),
                )
                path = args.out / "rows" / f"{setting}-{method}-{seed}-{key[:10]}.json"
                row, old_code = cached_row(path, args.refit_stale)
                if row is not None:
                    rows.append(row)
                    if old_code:
                        stale.append(f"{setting}/{method}/{seed}")
                    continue
                if fs is None:
                    fs = build_setting(setting, features, args.data_root, args.out, args.vqa_rad)
                t0 = time.perf_counter()
                row = run_row(fs, setting, method, args.bits, seed, options)
                atomic_write_json(path, row)
                rows.append(row)
                print(f"{setting} {method} seed {seed}: mAP {row['i2t_map']:.3f} / {row['t2i_map']:.3f}, paired R@10 "
                      f"{row['i2t_paired_r10']:.3f} / {row['t2i_paired_r10']:.3f} ({time.perf_counter() - t0:.0f}s)",
                      flush=True)  # fmt: skip
    lines = verdict(rows, settings)
    if "mcmfh-supervised" in methods:  # its own verdict, against the supervised baselines
        lines += ["", *verdict(rows, settings, "mcmfh-supervised", supervised=True)]
    note = stale_note(stale)
    md = "\n".join([markdown(rows, settings, methods), "", *lines, *(["", note] if note else [])])
    atomic_write_json(args.out / "robustness.json", {"rows": rows, "bits": args.bits, "seeds": seeds})
    atomic_write_text(args.out / "robustness.md", md + "\n")
    print(md)
    if note:
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
