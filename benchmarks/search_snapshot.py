"""Snapshot what `mcmfh search --json` answers on an archive, to show a refactor changed no result.

    python benchmarks/search_snapshot.py ARCHIVE --data-root ../shared/data/medpix2 --out before.json
    python benchmarks/search_snapshot.py ARCHIVE --data-root ../shared/data/medpix2 --out after.json
    cmp before.json after.json

Queries: the first ``--n`` test-split captions (text queries) and test-split images (image queries) of the dataset
at ``--data-root`` (a MedPix 2.0 folder by default), in id order. Each runs through the CLI entry point in this
process (the same command line as a shell, without paying a process start per query) as the default cross-modal
two-stage search, and a sample also as one-stage (``--rerank none``), same-modality and, where the archive has
studies, ``--target studies``. ``took_ms`` is dropped; everything else of the JSON is kept as printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from typer.testing import CliRunner

import mcmfh.cli  # noqa: F401  (registers every command on the app)
from mcmfh.cli.app import app
from mcmfh.data import load_dataset

SAMPLE = 10  # queries of each kind also run with the other options (one-stage, same modality, studies)


def run(runner: CliRunner, args: list[str]) -> dict:
    result = runner.invoke(app, ["search", *args, "--json"], catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"mcmfh search {' '.join(args)} failed ({result.exit_code}): {result.output[-500:]}")
    out = json.loads(result.stdout)
    out.pop("took_ms", None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archive", type=Path)
    ap.add_argument("--data-root", type=Path, required=True, help="the dataset the queries come from")
    ap.add_argument("--dataset", default="medpix2")
    ap.add_argument("--n", type=int, default=50, help="text queries and image queries each")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    ds = load_dataset(args.dataset, args.data_root, check_images=False)
    test = sorted((r for r in ds.records if r.split == "test"), key=lambda r: r.id)
    texts = [r.text for r in test][: args.n]
    images = [str(r.image) for r in test if r.image is not None][: args.n]
    archive = str(args.archive)
    manifest = json.loads((args.archive / "manifest.json").read_text(encoding="utf-8"))
    k = ["--k", str(args.k)]
    runner = CliRunner()
    cases: list[tuple[str, list[str]]] = []
    for kind, flag, queries, same in (("text", "--text", texts, "texts"), ("image", "--image", images, "images")):
        for i, q in enumerate(queries):
            base = [archive, flag, q, *k]
            cases.append((f"{kind} {i}", base))
            if i < SAMPLE:
                cases.append((f"{kind} {i} one-stage", [*base, "--rerank", "none"]))
                cases.append((f"{kind} {i} {same}", [*base, "--target", same]))
                if manifest.get("studies"):
                    cases.append((f"{kind} {i} studies", [*base, "--target", "studies"]))
    snapshot = {name: {"query": argv[2], "options": argv[3:], **run(runner, argv)} for name, argv in cases}
    args.out.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    n_text, n_image = len(texts), len(images)
    print(f"{len(cases)} searches ({n_text} text and {n_image} image queries, k={args.k}) -> {args.out}")


if __name__ == "__main__":
    main()
