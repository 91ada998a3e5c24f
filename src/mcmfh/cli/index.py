"""``mcmfh index build|add|remove|compact|info`` (an archive of hashed items) and ``mcmfh search`` (query it)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mcmfh.cli.app import app
from mcmfh.cli.inputs import ENCODING_HELP, QUIET_HELP, SKIP_REPORT_HELP, load_input, progress_for, write_skip_report
from mcmfh.cli.next_steps import require_archive, stray_query_line
from mcmfh.diversify import DEFAULT_PER_STUDY
from mcmfh.errors import MCMFHError

if TYPE_CHECKING:
    from mcmfh.features import FeatureSet

LOCK_HELP = ("Seconds to wait for another writer of this archive to finish (default: env MCMFH_LOCK_TIMEOUT or "
             "30); then fail with a message naming it.")  # fmt: skip

index_app = typer.Typer(help="Build and maintain a searchable archive (run + Hamming indexes + item metadata).",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(index_app, name="index")


@index_app.command("build")
def build(
    run_dir: Path = typer.Argument(..., help="Trained run folder (from `mcmfh train`)."),
    features: Path = typer.Option(..., "--features", help="Feature cache the run was trained on (same encoder)."),
    out: Path = typer.Option(..., "--out", help="Archive folder to write."),
    splits: str = typer.Option("train,dev", help="Comma-separated splits that form the database."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing archive."),
    backend: str = typer.Option("local", help="Where the codes live: local (in OUT) or milvus (a Milvus server)."),
    uri: str | None = typer.Option(
        None, help="Milvus URI (default http://127.0.0.1:19530); token from env MCMFH_MILVUS_TOKEN."
    ),
    metadata: str = typer.Option("sqlite", help="Item metadata with --backend milvus: sqlite (in OUT) or postgres."),
    dsn: str | None = typer.Option(
        None,
        envvar="MCMFH_POSTGRES_DSN",
        help="PostgreSQL DSN for --metadata postgres (env MCMFH_POSTGRES_DSN keeps a password off the command line; "
        "it is never written to the archive).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Hash the database split with the run's model and store codes plus item metadata."""
    from mcmfh.archive import Archive
    from mcmfh.features import FeatureSet
    from mcmfh.index.backends import StoreConfig
    from mcmfh.outputs import check_output

    check_output(out, "archive", overwrite=overwrite)  # never replaces a folder that is not an archive
    t0 = time.perf_counter()
    store = StoreConfig(backend=backend, uri=uri, metadata=metadata, dsn=dsn)  # validated before the slow load
    fs = FeatureSet.load(features)
    with Archive.build(run_dir, fs, out, splits=_splits(splits), overwrite=overwrite, store=store,
                       progress=progress_for(quiet)) as archive:  # fmt: skip
        n_img = len(archive.indexes["images"])
        typer.echo(f"archive {out}: {len(archive)} items ({n_img} with images), {archive.bits} bits, "
                   f"{archive.manifest['method']}, {backend} backend, "
                   f"built in {time.perf_counter() - t0:.1f}s")  # fmt: skip
    _warn_if_collapsed(run_dir, fs.splits(*_splits(splits)))


def _warn_if_collapsed(run_dir: Path, db: FeatureSet) -> None:
    """An archive of collapsed codes answers every query with the same few buckets: say so once, with the figures."""
    from mcmfh.evaluation.code_health import collapse_warning, method_code_health
    from mcmfh.training.runs import load_run

    method, _ = load_run(run_dir)
    if method.continuous:
        return
    images = db.image[db.has_image]
    health = method_code_health(method.encode_images(images), method.encode_texts(db.text), images, db.text)
    warning = collapse_warning(health, f"the archive's {method.bits}-bit codes")
    if warning:
        typer.echo(warning, err=True)


@index_app.command("add")
def add(
    archive_dir: Path = typer.Argument(..., help="Archive folder."),
    dataset: str = typer.Option(..., "--dataset", help="Loader of the new items (e.g. csv, jsonl, medpix2)."),
    data_root: Path = typer.Option(..., "--data-root", help="Folder or file the loader reads."),
    splits: str = typer.Option("train,dev,test", help="Which of the loaded splits to add."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable items instead of failing."),
    skip_report: Path = typer.Option(None, "--skip-report", help=SKIP_REPORT_HELP),
    encoding: str = typer.Option(None, "--encoding", help=ENCODING_HELP),
    lock_timeout: float = typer.Option(None, "--lock-timeout", min=0, help=LOCK_HELP),
) -> None:
    """Encode new items with the archive's encoder and model, and add them (ids already present are skipped)."""
    from mcmfh.archive import Archive

    require_archive(archive_dir)  # before the dataset is read
    ds = load_input(dataset, data_root, None, skip_bad, encoding)
    if ds.report.skipped:
        typer.echo(f"loader: {ds.report.summary()}")
    write_skip_report(archive_dir, skip_report, list(ds.report.skipped))
    wanted = set(_splits(splits))
    records = [r for r in ds.records if r.split in wanted]
    with Archive.open(archive_dir, writable=True, lock_timeout=lock_timeout) as archive:
        added = archive.add_records(records, source=ds.name)
        studies = f", {added['studies']} stud(ies) re-coded" if "studies" in added else ""
        typer.echo(f"added {added['texts']} item(s) ({added['images']} image codes{studies}); "
                   f"archive holds {len(archive)}")  # fmt: skip


@index_app.command("remove")
def remove(
    archive_dir: Path = typer.Argument(..., help="Archive folder."),
    ids: list[str] = typer.Argument(..., help="Item ids to remove."),
    lock_timeout: float = typer.Option(None, "--lock-timeout", min=0, help=LOCK_HELP),
) -> None:
    """Remove items by id (unknown ids are ignored)."""
    from mcmfh.archive import Archive

    require_archive(archive_dir)

    with Archive.open(archive_dir, writable=True, lock_timeout=lock_timeout) as archive:
        n = archive.remove(ids)
        typer.echo(f"removed {n} item(s); archive holds {len(archive)}")


@index_app.command("compact")
def compact(
    archive_dir: Path = typer.Argument(..., help="Archive folder."),
    lock_timeout: float = typer.Option(None, "--lock-timeout", min=0, help=LOCK_HELP),
) -> None:
    """Fold the segments that adds append (and the keys removed since) into one segment per sub-index.

    Searches are exact either way; compacting makes them a little faster and reclaims removed items' space."""
    from mcmfh.archive import Archive

    require_archive(archive_dir)

    with Archive.open(archive_dir, writable=True, lock_timeout=lock_timeout) as archive:
        done = archive.compact()
        what = ", ".join(m for m, changed in done.items() if changed) or "nothing (already compact)"
        typer.echo(f"compacted {what}; archive holds {len(archive)}")


@index_app.command("repair")
def repair(
    archive_dir: Path = typer.Argument(..., help="Archive folder."),
    lock_timeout: float = typer.Option(None, "--lock-timeout", min=0, help=LOCK_HELP),
) -> None:
    """Without a commit record (commit.json lost): remove items that only some sub-indexes hold (a change cut off
    half-way) from all of them, under the writer lock, and write a record. Re-run the add that was cut off."""
    from mcmfh.archive import Archive

    with Archive.open(archive_dir, writable=True, lock_timeout=lock_timeout, check_parts=False) as archive:
        partial = archive.repair()
        shown = ", ".join(partial[:10]) + (" ..." if len(partial) > 10 else "")
        typer.echo(f"removed {len(partial)} partial item(s){': ' + shown if partial else ''}; "
                   f"archive holds {len(archive)}; sub-indexes agree")  # fmt: skip


@index_app.command("info")
def info(archive_dir: Path = typer.Argument(..., help="Archive folder.")) -> None:
    """Print the archive's manifest, item counts and integrity (commit record, sub-indexes agreeing) as JSON."""
    from mcmfh.archive import Archive
    from mcmfh.archive.agreement import check_agreement

    require_archive(archive_dir)
    from mcmfh.evaluation.code_health import code_health

    with Archive.open(archive_dir, check_parts=False) as archive:
        counts = {m: len(ix) for m, ix in archive.indexes.items()}
        infos = {m: ix.info() for m, ix in archive.indexes.items()}
        # Code health of the stored codes (local sub-indexes hold them in memory; server stores are not read back).
        # study_members/ holds blank codes (its payload is what counts): left out.
        local = {m: i.codes for m, i in infos.items() if i.codes is not None and len(i.codes) and m != "study_members"}
        health = {m: code_health(c, int(archive.manifest["bits"])) for m, c in local.items()}
        segments = {m: i.segments for m, i in infos.items() if i.segments is not None}
        integrity = check_agreement(archive.indexes, has_record=bool(archive.record)).as_dict()
        # Payload rows from this key on carry a checksum (mcmfh.index.sealed); null: none (written before them).
        payloads = {m for m, ix in archive.indexes.items() if ix.capabilities.payloads}
        integrity["payload_sealed_from"] = {m: i.sealed_from for m, i in infos.items() if m in payloads}
        out = {**archive.manifest, "counts": counts, "segments": segments, "code_health": health,
               "integrity": integrity}  # fmt: skip
        typer.echo(json.dumps(out, indent=2, sort_keys=True))


# The search table's columns, said under it: a newcomer meets d= and s= before any documentation.
D_KEY = "d = Hamming distance of the codes (0 to bits, smaller is closer)"
S_KEY = "s = two-stage similarity (cosine, -1 to 1, the order shown)"
MORE_SHOWN = 5  # member ids listed under a grouped hit in the table (all of them are in --json)
H_KEY = "s = hybrid score (reciprocal rank fusion of the code and report-text rankings; the order shown)"


@app.command()
def search(
    archive_dir: Path = typer.Argument(..., help="Archive folder (from `mcmfh index build`)."),
    stray: list[str] | None = typer.Argument(None, hidden=True),  # a query without --text/--image: hinted below
    text: str = typer.Option(None, "--text", help="A text query: finds images (or texts with --target texts)."),
    image: Path = typer.Option(None, "--image", help="An image query (PNG/JPEG/DICOM): finds reports."),
    k: int = typer.Option(10, "--k", min=1, max=10_000),
    target: str = typer.Option(
        None,
        help="images, texts or studies (whole studies with their members, where the archive has studies); "
        "default: the other modality.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    rerank: str = typer.Option(
        None,
        "--rerank",
        help="The archive's payload codec (int8): two-stage (Hamming candidates "
        "re-scored by the stored payload; the default when the archive has one); none: Hamming order only.",
    ),
    per_study: int = typer.Option(
        DEFAULT_PER_STUDY,
        "--per-study",
        min=0,
        help="Items shown per study (case), its other members listed under it, and repeated texts folded; "
        "0: the raw item ranking.",
    ),
    hybrid: bool = typer.Option(
        None,
        "--hybrid/--no-hybrid",
        help="Text queries: also look the words up in the stored reports (BM25) and fuse both rankings "
        "(docs/hybrid.md); default: off.",
    ),
) -> None:
    """Search an archive with a text or an image; prints ranked items with Hamming distances (and, two-stage, the
    re-scored similarity they are ordered by)."""
    from mcmfh.archive import Archive
    from mcmfh.archive.search import TARGETS

    if stray:
        raise MCMFHError(stray_query_line(archive_dir, stray, given=text is not None or image is not None))
    if (text is None) == (image is None):
        raise MCMFHError("give exactly one of --text or --image")
    require_archive(archive_dir)
    if target is not None and target not in TARGETS:
        raise MCMFHError(f"--target {target}: expected one of {list(TARGETS)}")
    if hybrid and image is not None:
        raise MCMFHError("--hybrid: looks up the words of a text query; an image query has none (drop --hybrid)")
    with Archive.open(archive_dir) as archive:
        if target == "studies":
            _search_studies(archive, text, image, k, rerank, as_json, hybrid)
            return
        t0 = time.perf_counter()
        if text is not None:
            hits = archive.search_text(text, k, target=target or "images", rerank=rerank, per_study=per_study,
                                       hybrid=hybrid)  # fmt: skip
        else:
            hits = archive.search_image(image, k, target=target or "texts", rerank=rerank, per_study=per_study)
        took_ms = (time.perf_counter() - t0) * 1000
    rows = [{"rank": r + 1, "id": h.item.id, "distance": h.distance, "score": h.score, "study_id": h.item.study_id,
             "title": h.item.title, "labels": list(h.item.labels), "text": h.item.text, "more": len(h.others),
             "others": [m.id for m in h.others], "duplicates": list(h.duplicates)}
            for r, h in enumerate(hits)]  # fmt: skip
    if as_json:
        typer.echo(json.dumps({"results": rows, "took_ms": took_ms}, indent=2))
        return
    for row in rows:
        caption = row["text"] if len(row["text"]) <= 90 else row["text"][:87] + "..."
        score = "" if row["score"] is None else f"s={row['score']:.3f} "
        typer.echo(f"{row['rank']:>3}  d={row['distance']:<3} {score}{row['id']:<24} {caption}")
        if row["title"]:
            typer.echo(f"{'':>10}case: {row['title']}")
        typer.echo(f"{'':>10}labels: {', '.join(row['labels']) or '-'}")
        if row["more"]:
            shown = ", ".join(row["others"][:MORE_SHOWN]) + (" ..." if row["more"] > MORE_SHOWN else "")
            typer.echo(f"{'':>10}+ {row['more']} more in this case: {shown}")
        if row["duplicates"]:
            typer.echo(f"{'':>10}same text or image: {', '.join(row['duplicates'][:MORE_SHOWN])}")
    typer.echo(f"{len(rows)} result(s) in {took_ms:.1f} ms (encode + search)")
    if rows:
        key = H_KEY if hybrid else S_KEY
        typer.echo(f"{D_KEY}; {key}" if any(r["score"] is not None for r in rows) else D_KEY)


def _search_studies(archive: object, text: str | None, image: Path | None, k: int, rerank: str | None,
                    as_json: bool, hybrid: bool | None = None) -> None:  # fmt: skip
    """``mcmfh search --target studies``: one row per study, its members below it."""
    from mcmfh.archive import Archive

    assert isinstance(archive, Archive)
    t0 = time.perf_counter()
    if text is not None:
        hits = archive.search_studies_text(text, k, rerank=rerank, hybrid=hybrid)
    else:
        hits = archive.search_studies_image(image, k, rerank=rerank)
    took_ms = (time.perf_counter() - t0) * 1000
    rows = [{"rank": r + 1, "study_id": h.study_id, "title": h.title, "distance": h.distance, "score": h.score,
             "members": [{"id": it.id, "image": None if it.image is None else str(it.image), "labels": list(it.labels),
                          "text": it.text, "title": it.title}
                         for it in h.members]} for r, h in enumerate(hits)]  # fmt: skip
    if as_json:
        typer.echo(json.dumps({"target": "studies", "results": rows, "took_ms": took_ms}, indent=2))
        return
    for row in rows:
        score = "" if row["score"] is None else f"s={row['score']:.3f} "
        title = f": {row['title']}" if row["title"] else ""
        typer.echo(f"{row['rank']:>3}  d={row['distance']:<3} {score}study {row['study_id']}{title} "
                   f"({len(row['members'])} item(s))")  # fmt: skip
        for m in row["members"]:
            caption = m["text"] if len(m["text"]) <= 80 else m["text"][:77] + "..."
            typer.echo(f"{'':>10}{m['id']:<24} {'[image] ' if m['image'] else ''}{caption}")
    typer.echo(f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'} in {took_ms:.1f} ms (encode + search)")
    if rows:
        typer.echo(f"{D_KEY}; {S_KEY}" if any(r["score"] is not None for r in rows) else D_KEY)


def _splits(value: str) -> list[str]:
    out = [s.strip() for s in value.split(",") if s.strip()]
    if not out:
        raise MCMFHError("--splits: give at least one split name")
    return out
