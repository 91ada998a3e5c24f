"""An archive folder: its layout, the identity every sub-index shares, and how one is made (or its server stores
dropped before an overwrite).

Folder layout::

    manifest.json   kind "archive": the run's identity (method, bits, encoder, weights hash), image root, store
    run/            a copy of the run folder, so the archive is self-contained and cannot drift from its model
    images/         sub-index of image codes (items that have an image)
    texts/          sub-index of text codes (every item)
    studies/        (fused studies) one code per study: item id = study id, labels = the union
    study_members/  (fused studies) one row per item: its study and, as payload, its study inputs
    commit.json     the commit record: the sub-index states readers see (``mcmfh.archive.commit``)

The whole folder is written atomically; the items are hashed in by the caller's ``fill`` (``Archive.build``), so
this module never opens an archive.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mcmfh.archive.search import MODALITIES
from mcmfh.archive.writes import Batch, batch_from_features, payload_entry, studies_entry
from mcmfh.data.records import Dataset
from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.features import FeatureSet
from mcmfh.index.backends import StoreConfig, create_store, drop_store, open_store, store_manifest
from mcmfh.index.store import ItemStore
from mcmfh.io import atomic_dir, atomic_write_json
from mcmfh.manifest import new_manifest, read_manifest
from mcmfh.method import weights_sha256
from mcmfh.training.runs import check_features, load_run

KIND = "archive"
# Manifest fields every sub-index must share with the archive: an index made by another model is refused.
IDENTITY_KEYS = ("run_id", "method", "bits", "encoder", "encoder_version")
STUDY_PARTS = ("studies", "study_members")  # the fused-study sub-indexes (local only; see mcmfh.archive.writes)


def run_identity(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """What identifies a trained model: its weights' hash plus the encoder it reads."""
    return {"run_id": weights_sha256(run_dir)[:16], "method": manifest["method"], "bits": int(manifest["bits"]),
            "encoder": manifest.get("encoder"), "encoder_version": manifest.get("encoder_version")}  # fmt: skip


def build_folder(
    run_dir: Path,
    features: FeatureSet,
    out: Path,
    splits: Sequence[str],
    dataset: Dataset | None,
    overwrite: bool,
    store: StoreConfig | None,
    fill: Callable[[Path, dict[str, Any], Batch], None],
) -> None:
    """Write the archive folder ``out`` for the ``splits`` of ``features``: the run copied in, empty sub-indexes and
    the manifest, then ``fill(folder, manifest, batch)`` hashes the items in, all before the folder appears."""
    method, run_manifest = load_run(run_dir)
    check_features(run_manifest, features, run_dir)
    if out.exists() and not overwrite:
        raise MCMFHError(f"{out}: already exists (use --overwrite to replace it)")
    part = features.splits(*splits)
    if not len(part):
        raise MCMFHError(f"features have no items in split(s) {list(splits)}")
    if dataset is None:
        from mcmfh.data import dataset_from_source  # the loaders, only where an archive is built

        dataset = dataset_from_source(features.manifest.get("source", {}))
    batch = batch_from_features(part, dataset)
    identity = run_identity(run_dir, run_manifest)
    config = store or StoreConfig()
    where = store_manifest(config, identity["run_id"])
    studies = studies_entry(method, where, part)
    if overwrite and where["backend"] != "local" and out.exists():
        drop_server_stores(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        shutil.copytree(run_dir, tmp / "run")
        fields = {k: v for k, v in identity.items() if k != "bits"}  # bits is the index's own field
        made: list[ItemStore] = []
        try:
            for m in MODALITIES:
                made.append(create_store(tmp / m, m, identity["bits"], where, config, fields))
            for m in STUDY_PARTS if studies and studies["rule"] == "fused" else ():
                made.append(create_store(tmp / m, m, identity["bits"], {"backend": "local"}, StoreConfig(), fields))
            payload = payload_entry(method, where, part.text[:1])
            manifest = new_manifest(KIND, **identity, dataset=features.manifest.get("dataset"),
                                    label_set=features.manifest.get("label_set"), splits=list(splits),
                                    image_root=(dataset.source or {}).get("root"), store=where, payload=payload,
                                    studies=studies)  # fmt: skip
            atomic_write_json(tmp / "manifest.json", manifest)
            fill(tmp, manifest, batch)
        except BaseException:
            for s in made:  # a half-built archive leaves nothing on the servers
                with contextlib.suppress(Exception):  # cleanup after a failure must not hide that failure
                    drop_store(s)
            raise
        for s in made:
            s.close()


def drop_server_stores(folder: Path) -> None:
    """Before an overwrite: delete the collections/schemas the archive at ``folder`` keeps on servers."""
    try:
        old = read_manifest(folder, KIND)
    except ArtefactError:
        return  # not a finished archive: nothing recorded to drop
    store = old.get("store", {})
    if store.get("backend", "local") == "local":
        return
    for m in MODALITIES:
        drop_store(open_store(folder / m, m, int(old["bits"]), store, {}, writable=True))
