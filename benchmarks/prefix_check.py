"""What a clinician sees on a real archive (issue 25): the prefix property, distinct cases per screen, and scored
study results.

    python benchmarks/prefix_check.py ARCHIVE --features FEATURES [--queries 20] [--out results.json] [--no-cli]

Queries: the first ``--queries`` items of the features' query split (default ``test``, never in the archive) with
an image, in feature order: their caption as a text query and their image as an image query.

1. Prefix: ``--k 5`` against ``--k 50`` for every query — through the CLI (``mcmfh search --json``, default
   options: grouped by study, two-stage), the HTTP API (``POST /search/text`` / ``/search/image``, grouped and with
   ``per_study`` 0) and the library (items raw and grouped, studies). A query counts as equal when the 5 ids and
   their scores are the first 5 of the 50.
2. Distinct cases on the first screen (``SCREEN`` results, the page's default k): mean number of distinct studies
   among them, grouped (default) against raw (``per_study`` 0).
3. Study hits: distinct similarities among the first ``SCREEN`` study hits, whether they are ordered by them, and
   how many carry none (one-stage studies: all of them).

Prints a table and writes JSON. What it does not show: whether the cases shown are relevant (see the study modes of
``mcmfh evaluate --modes i2s,t2s``), or timings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

SCREEN = 12  # results on the page's first screen
SMALL, LARGE = 5, 50  # the issue's --k 5 against --k 50


def _queries(features: Path, split: str, n: int) -> list[tuple[str, str, Path]]:
    from mcmfh.data import dataset_from_source
    from mcmfh.features import FeatureSet

    fs = FeatureSet.load(features)
    part = fs.splits(split)
    ds = dataset_from_source(fs.manifest.get("source", {}))
    by_id = {r.id: r for r in ds.records}
    out = []
    for item_id, has_image in zip(part.ids, part.has_image, strict=True):
        rec = by_id.get(item_id)
        if has_image and rec is not None and rec.image is not None and rec.text.strip():
            out.append((item_id, rec.text, Path(rec.image)))
        if len(out) == n:
            break
    return out


def _prefix(small: list[Any], large: list[Any]) -> bool:
    return len(small) == min(SMALL, len(large)) and small == large[: len(small)]


def _cli(archive: Path, flag: str, query: str, k: int) -> list[tuple[str, Any]]:
    cmd = [sys.executable, "-m", "mcmfh", "search", str(archive), flag, query, "--k", str(k), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [(r["id"], r["score"]) for r in json.loads(out)["results"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("archive", type=Path)
    p.add_argument("--features", type=Path, required=True, help="Feature cache whose query split gives the queries.")
    p.add_argument("--split", default="test")
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--out", type=Path, default=None, help="JSON results (default: print only).")
    p.add_argument("--no-cli", action="store_true", help="Skip the CLI runs (a process per query: the slow part).")
    args = p.parse_args()

    from fastapi.testclient import TestClient

    from mcmfh.diversify import study_key
    from mcmfh.service.app import create_app
    from mcmfh.service.archive_engine import open_engine
    from mcmfh.service.settings import Settings

    queries = _queries(args.features, args.split, args.queries)
    engine = open_engine(args.archive, reload_interval=None)
    archive = engine.archive
    client = TestClient(create_app(engine, Settings(image_root=archive.image_root, max_k=max(LARGE, SCREEN))))
    equal: dict[str, list[bool]] = {}
    cases: dict[str, list[int]] = {}
    study: dict[str, list[Any]] = {"distinct_scores": [], "ordered": [], "unscored": []}

    def check(name: str, fetch: Any) -> None:
        equal.setdefault(name, []).append(_prefix(fetch(SMALL), fetch(LARGE)))

    def ids(hits: list[Any]) -> list[tuple[str, Any]]:
        return [(h.item.id, h.score) for h in hits]

    def api(route: str, q: Any, per: int | None) -> Any:
        def fetch(k: int) -> list[tuple[str, Any]]:
            extra = {} if per is None else {"per_study": per}
            if route == "text":
                r = client.post("/search/text", json={"query": q, "k": k, **extra})
            else:
                r = client.post("/search/image", files={"file": ("q", q.read_bytes())}, data={"k": str(k), **extra})
            r.raise_for_status()
            return [(h["id"], h["score"]) for h in r.json()["results"]]

        return fetch

    for _, text, image in queries:
        for kind, q, search, studies in (
            ("text", text, archive.search_text, archive.search_studies_text),
            ("image", image, archive.search_image, archive.search_studies_image),
        ):
            check(f"{kind} library raw", lambda k, q=q, s=search: ids(s(q, k, per_study=0)))
            check(f"{kind} library grouped", lambda k, q=q, s=search: ids(s(q, k)))
            check(f"{kind} API grouped", api(kind, q, None))
            check(f"{kind} API raw", api(kind, q, 0))
            if not args.no_cli:
                check(f"{kind} CLI", lambda k, q=q, kind=kind: _cli(args.archive, f"--{kind}", str(q), k))
            for mode, per in (("grouped", None), ("raw", 0)):
                hits = search(q, SCREEN) if per is None else search(q, SCREEN, per_study=per)
                cases.setdefault(f"{kind} {mode}", []).append(len({study_key(h.item) for h in hits}))
            if archive.has_studies:
                check(f"{kind} library studies", lambda k, q=q, s=studies: [(h.study_id, h.score) for h in s(q, k)])
                shown = studies(q, SCREEN)
                scores = [h.score for h in shown if h.score is not None]
                study["distinct_scores"].append(len(set(scores)))
                study["ordered"].append(scores == sorted(scores, reverse=True))
                study["unscored"].append(len(shown) - len(scores))
    engine.close()

    result = {
        "archive": archive.folder.name,
        "queries": len(queries),
        "prefix_equal": {name: f"{sum(v)}/{len(v)}" for name, v in equal.items()},
        "distinct_cases_first_screen": {name: float(np.mean(v)) for name, v in cases.items()},
        "study_hits": {
            "mean_distinct_scores_first_screen": float(np.mean(study["distinct_scores"])) if study["ordered"] else None,
            "min_distinct_scores_first_screen": int(min(study["distinct_scores"])) if study["ordered"] else None,
            "ordered_by_score": f"{sum(study['ordered'])}/{len(study['ordered'])}",
            "unscored_hits": int(sum(study["unscored"])),
        },
        "screen": SCREEN,
        "k_pair": [SMALL, LARGE],
    }
    print(f"{result['archive']}: {len(queries)} text + {len(queries)} image queries from split {args.split}")
    print(f"\n{'prefix: top ' + str(SMALL) + ' of --k ' + str(SMALL) + ' == of --k ' + str(LARGE):<44} equal")
    for name, v in result["prefix_equal"].items():
        print(f"  {name:<42} {v}")
    print(f"\n{'distinct cases in the first ' + str(SCREEN):<44} mean")
    for name, v in result["distinct_cases_first_screen"].items():
        print(f"  {name:<42} {v:.2f}")
    s = result["study_hits"]
    if s["mean_distinct_scores_first_screen"] is not None:
        print(f"\nstudy hits, first {SCREEN}: distinct similarities mean {s['mean_distinct_scores_first_screen']:.2f} "
              f"(min {s['min_distinct_scores_first_screen']}), ordered by them {s['ordered_by_score']}, "
              f"unscored {s['unscored_hits']}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
