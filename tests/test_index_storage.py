"""The persistent item index: round trips, clear errors on foreign/corrupt folders, and crash safety proven by
killing a real writer process at every step of a commit and at random moments."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mcmfh.errors import ArtefactError, MCMFHError
from mcmfh.index import text_index
from mcmfh.index.codes import hamming_matrix
from mcmfh.index.local_store import DB_NAME, ItemIndex
from mcmfh.items import Item
from mcmfh.locking import LOCK_NAME

SRC = Path(__file__).resolve().parents[1] / "src"
BITS = 32


def codes_of(ns: np.ndarray) -> np.ndarray:
    """The codes of items ``it{n}``: a fixed hash of n, so a reader can check every stored code."""
    x = np.asarray(ns, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(29)
    return x.astype("<u8").view(np.uint8).reshape(-1, 8)[:, : BITS // 8].copy()


def items(lo: int, hi: int) -> tuple[np.ndarray, list[dict]]:
    meta = [Item(f"it{n}", Path(f"img/{n}.png"), f"caption {n}", (f"l{n % 3}",), source="t") for n in range(lo, hi)]
    return codes_of(np.arange(lo, hi)), meta


def check_consistent(folder: Path) -> int:
    """Open read-only and check every code, every metadata row and an exact search; returns the item count."""
    with ItemIndex.open(folder) as idx:
        all_items = list(idx)
        assert len(all_items) == len(idx)
        codes = idx.index.codes
        keys = idx.index.ids
        by_key = {it.key: it for it in all_items}
        numbers = []
        for key in keys.tolist():
            it = by_key[key]
            n = int(it.id[2:])
            assert it.text == f"caption {n}" and it.labels == (f"l{n % 3}",) and it.image == Path(f"img/{n}.png")
            numbers.append(n)
        np.testing.assert_array_equal(codes, codes_of(np.array(numbers, np.int64)))
        # The text index (kept in step by triggers) holds exactly the committed items, and matches its item table.
        assert {it.id for it, _ in idx.lexical("caption", len(all_items) + 10)} == {it.id for it in all_items}
        for n in numbers[:3]:
            assert [it.id for it, _ in idx.lexical(str(n), 5)] == [f"it{n}"]
        con = sqlite3.connect(folder / DB_NAME, isolation_level=None)
        try:
            text_index.check(con)
        finally:
            con.close()
        if len(idx):
            q = codes[:3]
            hits = idx.search(q, 5)
            ref = np.sort(hamming_matrix(q, codes), axis=1)[:, :5]
            assert [[h.distance for h in row] for row in hits] == ref[:, : len(hits[0])].tolist()
        return len(idx)


def test_create_add_search_remove_reopen(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    idx = ItemIndex.create(folder, BITS, run="run-1", encoder="enc-a")
    codes, meta = items(0, 50)
    keys = idx.add(codes, meta)
    assert keys.tolist() == list(range(50))
    hits = idx.search(codes[7:8], k=3)[0]
    assert hits[0].item.id == "it7" and hits[0].distance == 0 and hits[0].item.labels == ("l1",)
    assert idx.remove(["it7", "it8", "nope"]) == 2
    assert idx.search(codes[7:8], k=1)[0][0].item.id != "it7"
    with pytest.raises(MCMFHError, match="already in the index"):
        idx.add(codes[:1], meta[:1])
    idx.add(*items(50, 60))
    idx.close()
    assert check_consistent(folder) == 58
    with ItemIndex.open(folder, expect={"run": "run-1", "bits": BITS}) as back:
        assert back.manifest["kind"] == "index" and back.manifest["count"] == 58 and back.manifest["mcmfh_version"]
        assert back.keys_of(["it9", "it7"]) == {"it9": 9}
        assert [it.id for it in back.get([51, 0])] == ["it51", "it0"]
        with pytest.raises(MCMFHError, match="read-only"):
            back.add(*items(60, 61))
    assert set(own_files(folder)) <= set(listed_files(folder))  # the previous generation's are kept for readers
    with ItemIndex.open(folder, writable=True) as idx:
        assert idx.compact() and not idx.compact()
        idx.remove(["it0"])  # one more commit: the pre-compaction files are no longer anyone's
    names = {p.name for p in folder.iterdir()}
    assert names == {"manifest.json", DB_NAME, LOCK_NAME, *listed_files(folder), *own_files(folder)}
    assert len(own_files(folder)) == 3  # one segment (codes, keys) and the removed keys
    assert check_consistent(folder) == 57


def listed_files(folder: Path) -> list[str]:
    """Files the committed manifest names."""
    m = json.loads((folder / "manifest.json").read_text())
    out = [seg[part]["file"] for seg in m["segments"] for part in ("codes", "keys")]
    return out + ([m["removed"]["file"]] if m.get("removed") else [])


def own_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.npy"))


def test_bad_items_are_clear_errors(tmp_path: Path) -> None:
    idx = ItemIndex.create(tmp_path / "idx", BITS)
    codes, meta = items(0, 2)
    with pytest.raises(MCMFHError, match=r"items\[0\]: expected an Item with a non-empty id"):
        idx.add(codes, [Item("", None, "x"), meta[1]])
    with pytest.raises(MCMFHError, match=r"items\[1\]: expected an Item"):
        idx.add(codes, [meta[0], {"id": "a mapping"}])  # type: ignore[list-item]
    with pytest.raises(MCMFHError, match=r"items\[1\] \(it1\): labels must be a list of strings"):
        idx.add(codes, [meta[0], replace(meta[1], labels="lung")])
    with pytest.raises(MCMFHError, match="repeat"):
        idx.add(codes, [meta[0], meta[0]])
    with pytest.raises(MCMFHError, match="2 items but codes"):
        idx.add(codes[:1], meta)
    with pytest.raises(MCMFHError, match="shape"):
        idx.add(np.zeros((2, 8), np.uint8), meta)  # 64-bit codes into a 32-bit index
    idx.close()
    assert check_consistent(tmp_path / "idx") == 0
    with pytest.raises(MCMFHError, match="already exists"):
        ItemIndex.create(tmp_path / "idx", BITS)


def test_foreign_corrupt_and_truncated_folders_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    with ItemIndex.create(folder, BITS, run="run-1") as idx:
        idx.add(*items(0, 100))
    with pytest.raises(ArtefactError, match="bits: 64 != 32"):
        ItemIndex.open(folder, expect={"bits": 64})
    with pytest.raises(ArtefactError, match="run: 'run-2' != 'run-1'"):
        ItemIndex.open(folder, expect={"run": "run-2"})
    codes_file = folder / listed_files(folder)[0]
    good = codes_file.read_bytes()

    codes_file.write_bytes(good[:-7])
    with pytest.raises(ArtefactError, match="truncated"):
        ItemIndex.open(folder)
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF  # same size, one code changed: only the checksum can tell
    codes_file.write_bytes(bytes(flipped))
    with pytest.raises(ArtefactError, match="checksum"):
        ItemIndex.open(folder)
    codes_file.write_bytes(good)
    assert check_consistent(folder) == 100

    con = sqlite3.connect(folder / DB_NAME)
    con.execute("DELETE FROM items WHERE key = 3")
    con.commit()
    con.close()
    with pytest.raises(ArtefactError, match="99 items in items.sqlite and 100 codes, but 100 in the manifest"):
        ItemIndex.open(folder)
    (folder / DB_NAME).write_bytes(b"not a database" * 100)
    with pytest.raises(ArtefactError, match="unreadable item database"):
        ItemIndex.open(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(ArtefactError, match="missing"):
        ItemIndex.open(folder)


CHILD = r"""
import os, signal, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_index_storage import items
from mcmfh.index import local_store as storage

folder, phase, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])

def die(*_a, **_k):
    os.kill(os.getpid(), signal.SIGKILL)

if phase == "after-arrays":  # new generation files written, nothing else
    orig = storage.ItemIndex._write_segment
    storage.ItemIndex._write_segment = lambda self, *a: (orig(self, *a), die())[0]
elif phase == "after-sql":  # rows committed in SQLite, manifest not yet renamed in
    orig_write = storage.atomic_write_json
    storage.atomic_write_json = lambda p, obj: die() if str(p).endswith("manifest.json") else orig_write(p, obj)
elif phase == "mid-manifest":  # half of the manifest's temp file written
    def half(path, obj):
        tmp = os.path.join(os.path.dirname(path), ".manifest.json.crash.tmp")
        with open(tmp, "w") as f:
            f.write('{{"kind": "ind')
            f.flush()
        die()
    storage.atomic_write_json = half
elif phase == "before-cleanup":  # committed, old generation and removed rows not yet dropped
    orig_cleanup = storage.ItemIndex._cleanup
    storage.ItemIndex._cleanup = lambda self, prev: die() if self.generation > 1 else orig_cleanup(self, prev)

idx = storage.ItemIndex.open(folder, writable=True)
n = idx.manifest["next_key"]
while True:
    idx.add(*items(n, n + batch))
    n += batch
    if phase == "remove":
        idx.remove([f"it{{n - 1}}", f"it{{n - 2}}"])
    print("committed", len(idx), flush=True)
"""


def run_child(folder: Path, phase: str, batch: int, tmp_path: Path) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, str(script), str(folder), phase, str(batch)], stdout=subprocess.PIPE, text=True, env=env
    )


@pytest.mark.parametrize("phase", ["after-arrays", "after-sql", "mid-manifest", "before-cleanup"])
def test_killed_writer_at_each_commit_step_leaves_last_good_index(tmp_path: Path, phase: str) -> None:
    folder = tmp_path / "idx"
    with ItemIndex.create(folder, BITS, kind="flat") as idx:
        idx.add(*items(0, 40))
    before = json.loads((folder / "manifest.json").read_text())
    committed = {"manifest.json", DB_NAME, LOCK_NAME, *listed_files(folder)}
    child = run_child(folder, phase, 25, tmp_path)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, out
    leftovers = {p.name for p in folder.iterdir()} - committed
    expect_count = 65 if phase == "before-cleanup" else 40  # before-cleanup died after its commit point
    assert leftovers, "the kill should have left a half-done change behind"
    assert check_consistent(folder) == expect_count
    with ItemIndex.open(folder, writable=True) as idx:  # a writer rolls back / cleans up, then carries on
        assert len(idx) == expect_count
        idx.add(*items(100, 105))
    assert check_consistent(folder) == expect_count + 5
    assert json.loads((folder / "manifest.json").read_text())["generation"] > before["generation"]
    assert not [p for p in folder.iterdir() if p.name != LOCK_NAME and (p.name.startswith(".") or p.suffix == ".tmp")]


def test_sigkill_at_random_moments_during_adds(tmp_path: Path) -> None:
    """A writer adding big batches in a loop, SIGKILLed after a random delay, four times over the same folder."""
    folder = tmp_path / "idx"
    ItemIndex.create(folder, BITS, kind="flat").close()
    rng = np.random.default_rng(0)
    committed = 0
    for round_ in range(4):
        child = run_child(folder, "remove" if round_ % 2 else "none", 3000, tmp_path)
        assert child.stdout is not None
        seen = []
        while len(seen) < 1 + round_ % 2:
            line = child.stdout.readline()
            assert line, "writer exited early"
            seen.append(int(line.split()[1]))
        time.sleep(rng.uniform(0.0, 0.2))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        count = check_consistent(folder)
        assert count >= max(seen) >= committed  # nothing committed is lost
        with ItemIndex.open(folder, writable=True) as idx:
            assert len(idx) == count
        committed = count
    assert committed > 0


def test_segments_merge_like_a_binary_counter_and_search_like_one_index(tmp_path: Path) -> None:
    from mcmfh.index.factory import make_index
    from mcmfh.index.segments import merge_plan

    assert merge_plan([1000]) == 0 and merge_plan([1000, 1]) == 0
    assert merge_plan([1000, 1, 1]) == 2 and merge_plan([1000, 2, 1, 1]) == 3 and merge_plan([4, 2, 1, 1]) == 4
    folder = tmp_path / "idx"
    with ItemIndex.create(folder, 16, kind="bucket") as idx:
        rng = np.random.default_rng(0)
        all_codes = rng.integers(0, 4, size=(400, 2), dtype=np.uint8)  # few distinct codes: many ties
        idx.add(all_codes[:300], [Item(f"it{i}", None, "") for i in range(300)])
        for i in range(300, 400):  # single adds: segments merge, never more than about log2 of the tail + 2
            idx.add(all_codes[i : i + 1], [Item(f"it{i}", None, "")])
            assert len(idx.index.segments) <= 2 + int(np.log2(i - 299)) + 1
        idx.remove([f"it{i}" for i in range(0, 400, 7)])
        one = make_index(16, "bucket")
        alive = [i for i in range(400) if i % 7]
        one.add(all_codes[alive], np.array(alive, np.int64))
        queries = rng.integers(0, 4, size=(20, 2), dtype=np.uint8)
        for k in (1, 10, 57, 400):
            d, keys = idx.index.search(queries, k)
            d1, keys1 = one.search(queries, k)
            np.testing.assert_array_equal(d, d1)
            np.testing.assert_array_equal(keys, keys1)  # same items, same tie order (insertion order)
    with ItemIndex.open(folder) as back:  # the files give the same index
        np.testing.assert_array_equal(back.index.search(queries, 57)[1], one.search(queries, 57)[1])


def test_format_1_folders_are_read_and_upgraded_on_the_first_change(tmp_path: Path) -> None:
    from mcmfh.index import _files

    folder = tmp_path / "idx"
    with ItemIndex.create(folder, BITS) as idx:
        idx.add(*items(0, 10))
    m = json.loads((folder / "manifest.json").read_text())
    seg = m.pop("segments")[0]
    m.pop("removed")
    codes, keys = np.load(folder / seg["codes"]["file"]), np.load(folder / seg["keys"]["file"])
    m.update(format=1, **_files.write_arrays(folder, {"codes": codes, "keys": keys}, suffix=f"-{m['generation']}"))
    (folder / "manifest.json").write_text(json.dumps(m))  # what mcmfh wrote before segments
    assert check_consistent(folder) == 10
    with ItemIndex.open(folder, writable=True) as idx:
        idx.add(*items(10, 12))
    assert json.loads((folder / "manifest.json").read_text())["format"] == 2
    assert check_consistent(folder) == 12


def _payload_blobs(folder: Path) -> dict[int, bytes]:
    with sqlite3.connect(folder / DB_NAME) as db:
        return dict(db.execute("SELECT key, payload FROM items"))


def _set_blob(folder: Path, key: int, blob: bytes) -> None:
    with sqlite3.connect(folder / DB_NAME) as db:
        db.execute("UPDATE items SET payload = ? WHERE key = ?", (blob, key))


def test_payload_rows_carry_a_checksum_and_a_damaged_row_is_named(tmp_path: Path) -> None:
    """Random bytes of the right length, a row copied onto another item, a flipped bit: each is refused with the
    file, the item and the key; the intact rows read back exactly."""
    folder = tmp_path / "idx"
    rng = np.random.default_rng(0)
    payload = rng.integers(0, 256, (10, 16), dtype=np.uint8)
    with ItemIndex.create(folder, BITS) as idx:
        idx.add(*items(0, 10), payload=payload)
        np.testing.assert_array_equal(idx.payloads(np.arange(10), 16), payload)
    blobs = _payload_blobs(folder)
    assert all(len(b) == 16 + 4 for b in blobs.values())  # the row and its CRC-32
    for damage in (os.urandom(20), blobs[4], bytes([blobs[3][0] ^ 1]) + blobs[3][1:]):
        _set_blob(folder, 3, damage)
        with ItemIndex.open(folder) as idx:
            np.testing.assert_array_equal(idx.payloads([0, 1, 2], 16), payload[:3])
            with pytest.raises(ArtefactError, match=r"items.sqlite: the 16-byte payload of item 'it3' \(key 3\) "
                                                    r"fails its checksum.*damaged"):  # fmt: skip
                idx.payloads([1, 3], 16)
    _set_blob(folder, 3, blobs[3][:-1])  # truncated by one byte
    with ItemIndex.open(folder) as idx, pytest.raises(ArtefactError, match="it3.*wrong length"):
        idx.payloads([3], 16)


def test_an_index_written_before_payload_checksums_reads_as_before_and_seals_what_is_added(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    payload = np.arange(12 * 8, dtype=np.uint8).reshape(12, 8)
    with ItemIndex.create(folder, BITS) as idx:
        idx.add(*items(0, 10), payload=payload[:10])
    for key, blob in _payload_blobs(folder).items():  # what mcmfh wrote before checksums: bare rows ...
        _set_blob(folder, key, blob[:8])
    m = json.loads((folder / "manifest.json").read_text())
    del m["payload_sealed_from"]  # ... and no record of sealing
    (folder / "manifest.json").write_text(json.dumps(m))
    with ItemIndex.open(folder, writable=True) as idx:
        np.testing.assert_array_equal(idx.payloads(np.arange(10), 8), payload[:10])  # read unchecked
        idx.add(*items(10, 12), payload=payload[10:])
        assert idx.manifest["payload_sealed_from"] == 10
        np.testing.assert_array_equal(idx.payloads(np.arange(12), 8), payload)
    _set_blob(folder, 11, os.urandom(12))
    _set_blob(folder, 2, os.urandom(8))  # an old row has no checksum: this damage is not seen (documented)
    with ItemIndex.open(folder) as idx:
        assert idx.payloads([2], 8).shape == (1, 8)
        with pytest.raises(ArtefactError, match="'it11'.*checksum"):
            idx.payloads([10, 11], 8)
