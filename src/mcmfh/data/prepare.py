"""``prepare(dataset, out_dir)``: download a public dataset and lay it out the way its loader reads it.

- ``openi``: ``NLMCXR_reports.tgz`` and ``NLMCXR_png.tgz`` from the NLM Open-i collections URL ->
  ``<out>/ecgen-radiology/*.xml`` and ``<out>/NLMCXR_png/*.png`` (the loader's ``nlm`` layout).
- ``roco``: the ROCO text files (from ``source``, a checkout of the ROCO repository or a folder in the flattened
  layout, else the repository archive) -> ``<out>/<split>/*.txt``, then every image listed in ``dlinks.txt`` from its
  PubMed Central Open Access package -> ``<out>/<split>/images/<PMC id>_<name>`` (see ``mcmfh.data.roco_fetch``).
- ``medpix2``: the MedPix 2.0 repository archive (or ``source``, a checkout) -> ``<out>/medpix2.csv`` +
  ``<out>/images/*.png`` (see ``mcmfh.data.medpix2_convert``).
- ``synthetic``: no download; generates the built-in demo dataset (``mcmfh.data.synthetic``).

Downloads go to ``<out>/.downloads/`` and resume after an interruption (``mcmfh.data.download``). Each output folder
appears in one atomic rename once complete, and the file the loader looks for first is written last, so a stopped
``prepare`` never leaves a layout that loads as if it were complete. Running it again continues where it stopped.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from mcmfh.data.download import DOWNLOADS, DownloadConfig, download, url_join
from mcmfh.data.tarzip import extract_matching
from mcmfh.errors import DataError, MCMFHError
from mcmfh.io import atomic_dir, atomic_write_json
from mcmfh.manifest import MANIFEST_NAME, new_manifest

OPENI_BASE_URL = "https://openi.nlm.nih.gov/imgs/collections/"
OPENI_ARCHIVES = {"reports": "NLMCXR_reports.tgz", "images": "NLMCXR_png.tgz"}
KIND = "dataset"  # manifest kind of a prepared dataset folder


def fetch_or_find(
    name: str, base_url: str, out: Path, source: Path | None, checksums: dict[str, str] | None, cfg: DownloadConfig
) -> Path:
    """The archive ``name``: from ``source`` when given (used in place), else downloaded under ``out/.downloads``."""
    if source is not None:
        p = source / name
        if not p.is_file():
            raise DataError(f"{p}: not found in --source folder")
        return p
    return download(url_join(base_url, name), out / DOWNLOADS / name, (checksums or {}).get(name), cfg)


def extract_folder(archive: Path, target: Path, pick: Callable[[PurePosixPath], str | None], what: str) -> int:
    """Extract the picked members into ``target`` in one atomic step; skip when ``target`` already exists."""
    if target.is_dir():
        return sum(1 for _ in target.iterdir())
    with atomic_dir(target) as tmp:
        n = extract_matching(archive, tmp, pick)
        if n == 0:
            raise DataError(f"{archive}: no {what} found in the archive")
    return n


def prepare_openi(
    out: Path,
    base_url: str | None,
    source: Path | None,
    checksums: dict[str, str] | None,
    cfg: DownloadConfig,
    images: bool = True,
) -> dict[str, int]:
    """The two NLM archives -> ``ecgen-radiology/`` and ``NLMCXR_png/`` (``images=False``: reports only)."""
    base = base_url or OPENI_BASE_URL
    reports = fetch_or_find(OPENI_ARCHIVES["reports"], base, out, source, checksums, cfg)
    counts = {"images": 0}
    if images:  # images first: the report folder (what the loader detects) appears last
        png = fetch_or_find(OPENI_ARCHIVES["images"], base, out, source, checksums, cfg)
        counts["images"] = extract_folder(
            png, out / "NLMCXR_png", lambda p: p.name if p.suffix.lower() == ".png" else None, "PNG images"
        )
    counts["reports"] = extract_folder(
        reports,
        out / "ecgen-radiology",
        lambda p: p.name if p.suffix.lower() == ".xml" and "ecgen-radiology" in p.parts else None,
        "ecgen-radiology/*.xml reports",
    )
    return counts


def prepare(
    dataset: str,
    out_dir: str | os.PathLike[str],
    base_url: str | None = None,
    source: str | os.PathLike[str] | None = None,
    *,
    checksums: dict[str, str] | None = None,
    config: DownloadConfig | None = None,
    **options: object,
) -> Path:
    """Download and lay out ``dataset`` under ``out_dir``; return ``out_dir``. See the module docstring.

    ``base_url`` replaces the default download location (a mirror, or a local server in tests); ``source`` points to
    files already on disk instead of downloading them; ``checksums`` maps archive file names to SHA-256 hex digests.
    Dataset options: openi ``images`` (bool); roco ``subset``, ``splits``, ``limit``, ``keep_archives``,
    ``text_url``, ``images``; medpix2 ``ref``; synthetic ``n``, ``seed``.
    """
    from mcmfh.data import medpix2_convert, roco_fetch, synthetic
    from mcmfh.outputs import artefact_kind, check_output

    out = Path(out_dir)
    if artefact_kind(out) is None and (out / "prepare.json").is_file():  # prepared before folders had manifests
        atomic_write_json(out / MANIFEST_NAME, new_manifest(KIND, dataset=None))
    # A prepared folder is resumed (downloads continue, finished parts are kept); anything else is refused.
    if check_output(out, KIND, resumable=True) == "new":
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / MANIFEST_NAME, new_manifest(KIND, dataset=dataset))
    src = Path(source) if source is not None else None
    if src is not None and not src.exists():
        raise DataError(f"{src}: --source folder not found")
    cfg = config or DownloadConfig()
    handlers = {
        "openi": (prepare_openi, (out, base_url, src, checksums, cfg)),
        "roco": (roco_fetch.prepare_roco, (out, base_url, src, cfg)),
        "medpix2": (medpix2_convert.prepare_medpix2, (out, base_url, src, checksums, cfg)),
        "synthetic": (synthetic.prepare_synthetic, (out,)),
    }
    if dataset not in handlers:
        raise MCMFHError(f"prepare: unknown dataset {dataset!r}; can prepare {sorted(handlers)}")
    fn, args = handlers[dataset]
    accepted = list(inspect.signature(fn).parameters)[len(args) :]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise MCMFHError(f"prepare {dataset}: unknown option(s) {unknown}; accepted: {accepted}")
    summary = fn(*args, **options)
    atomic_write_json(out / MANIFEST_NAME, new_manifest(KIND, dataset=dataset))
    atomic_write_json(out / "prepare.json", {"dataset": dataset, "base_url": base_url, **summary})
    return out
