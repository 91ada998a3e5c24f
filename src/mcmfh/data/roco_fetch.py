"""ROCO: lay out the text files, then fetch each image from its PubMed Central Open Access package.

``dlinks.txt`` lines read ``<ROCO id> \\t wget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/xx/yy/PMCnnn.tar.gz
-P /path/to/Dir \\t <image file name>``. The archive path after ``/pub/pmc/`` is joined to ``base_url`` (default the
HTTPS service of the same NCBI server; any mirror works), each package is downloaded once for all the images it holds
(resumable), the member ``PMCnnn/<name>`` is extracted to ``<split>/images/PMCnnn_<name>`` (atomic per image) and the
package is deleted unless ``keep_archives``. Images already on disk are skipped, so a rerun continues; packages that
fail (gone from PMC, missing member) are listed in the summary and their items stay text-only for the loader.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from mcmfh.data.build import Issues
from mcmfh.data.download import DOWNLOADS, DownloadConfig, download, url_join
from mcmfh.data.roco import IMAGES_DIR, SPLIT_DIRS, image_file_name, parse_dlink, pmc_id, read_tsv
from mcmfh.data.tarzip import extract_matching, iter_members
from mcmfh.errors import DataError
from mcmfh.io import atomic_write_bytes

PMC_BASE_URL = "https://ftp.ncbi.nlm.nih.gov/pub/pmc/"
TEXT_ARCHIVE_URL = "https://github.com/razorx89/roco-dataset/archive/a1f0ad6c578ca8801e5a6eccc90af051aee1c326.zip"
TEXT_FILES = ("captions.txt", "keywords.txt", "cuis.txt", "semtypes.txt", "dlinks.txt", "licences.txt")
# Text files are copied captions.txt last: the loader finds a split by its captions.txt.
COPY_ORDER = tuple(f for f in TEXT_FILES if f != "captions.txt") + ("captions.txt",)


def pmc_url(ftp_url: str, base_url: str) -> str:
    """``ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/6/b/P.tar.gz`` -> ``<base_url>/oa_package/6/b/P.tar.gz``."""
    marker = "/pub/pmc/"
    if marker not in ftp_url:
        raise DataError(f"unexpected PMC archive URL {ftp_url!r} (expected .../pub/pmc/...)")
    return url_join(base_url, ftp_url.split(marker, 1)[1])


def _text_folder(src: Path, split_dir: str, subset: str) -> Path | None:
    for cand in (src / split_dir / subset, src / "data" / split_dir / subset, src / split_dir):
        if (cand / "captions.txt").is_file():
            return cand
    return None


def _layout_text(out: Path, src: Path, subset: str, splits: tuple[str, ...]) -> None:
    for split_dir in splits:
        folder = _text_folder(src, split_dir, subset)
        if folder is None:
            raise DataError(f"{src}: no ROCO text files for split {split_dir!r} (looked for data/{split_dir}/{subset})")
        for name in COPY_ORDER:
            if (folder / name).is_file() and not (out / split_dir / name).is_file():
                atomic_write_bytes(out / split_dir / name, (folder / name).read_bytes())


def _text_from_archive(out: Path, url: str, cfg: DownloadConfig) -> Path:
    archive = download(url, out / DOWNLOADS / "roco-dataset.zip", config=cfg)
    target = out / DOWNLOADS / "roco-text"
    if not target.is_dir():

        def pick(p):
            return "/".join(p.parts[1:]) if p.name in TEXT_FILES and "data" in p.parts else None

        extract_matching(archive, target, pick)
    return target


def _wanted(out: Path, splits: tuple[str, ...], limit: int | None) -> tuple[dict[str, list[tuple[str, Path]]], int]:
    """Archive URL -> [(member name, target path)] for images not yet on disk; also how many are there already."""
    scratch = Issues("roco", skip_bad=True)
    by_archive: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    done = n = 0
    for split_dir in splits:
        for _rid, (_line, fields) in read_tsv(out / split_dir / "dlinks.txt", scratch, 3).items():
            link = parse_dlink(fields)
            if link is None:
                continue
            if limit is not None and n >= limit:
                break
            n += 1
            url, name = link
            target = out / split_dir / IMAGES_DIR / image_file_name(url, name)
            if target.is_file():
                done += 1
            else:
                by_archive[url].append((f"{pmc_id(url)}/{name}", target))
    return by_archive, done


def _fetch_archive(url: str, items: list[tuple[str, Path]], out: Path, base: str, cfg: DownloadConfig, keep: bool):
    local = download(pmc_url(url, base), out / DOWNLOADS / "pmc" / url.rsplit("/", 1)[-1], config=cfg)
    wanted = dict(items)
    by_name = {m.split("/", 1)[1]: t for m, t in items}
    found = set()
    for path, opener in iter_members(local):
        # The member is normally PMCnnn/<name>; match on the file name too, in case a package is laid out flatter.
        target = wanted.get(str(path)) or by_name.get(path.name)
        if target is None or target in found:
            continue
        with opener() as f:
            atomic_write_bytes(target, f.read())
        found.add(target)
    if not keep:
        local.unlink(missing_ok=True)
    return [m for m, t in items if t not in found]


def prepare_roco(
    out: Path,
    base_url: str | None,
    source: Path | None,
    cfg: DownloadConfig,
    subset: str = "radiology",
    splits: tuple[str, ...] = tuple(SPLIT_DIRS),
    limit: int | None = None,
    keep_archives: bool = False,
    text_url: str = TEXT_ARCHIVE_URL,
    images: bool = True,
) -> dict:
    unknown = sorted(set(splits) - set(SPLIT_DIRS))
    if unknown:
        raise DataError(f"roco: unknown split(s) {unknown}; expected {list(SPLIT_DIRS)}")
    src = source if source is not None else _text_from_archive(out, text_url, cfg)
    _layout_text(out, src, subset, tuple(splits))
    if not images:
        return {"subset": subset, "images": "skipped"}
    by_archive, already = _wanted(out, tuple(splits), limit)
    failed: list[dict[str, str]] = []
    fetched = 0
    base = base_url or PMC_BASE_URL
    quiet = DownloadConfig(cfg.retries, cfg.backoff_s, cfg.timeout_s, cfg.chunk_bytes, progress=False)
    for url, items in tqdm(sorted(by_archive.items()), desc="PMC packages", unit="pkg", disable=not cfg.progress):
        try:
            missing = _fetch_archive(url, items, out, base, quiet, keep_archives)
        except DataError as e:
            failed.append({"archive": url, "why": str(e)})
            continue
        fetched += len(items) - len(missing)
        failed.extend({"archive": url, "why": f"{m} not in the package"} for m in missing)
    return {"subset": subset, "images_fetched": fetched, "images_already_there": already, "failed": failed}
