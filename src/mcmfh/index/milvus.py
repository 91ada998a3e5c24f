"""``MilvusIndex``: the codes-index contract (``mcmfh.index.base.CodesIndex``) over a Milvus collection of binary
vectors (needs ``mcmfh[scale]``). Like FAISS's remote index classes it is its own class, not a subclass of the
in-memory ``HammingIndex``: its codes live on the server, so it shares the contract, not the storage.

The collection has three fields: ``id`` (INT64 primary key, the id ``search`` returns), ``seq`` (INT64 insertion
counter) and ``code`` (BINARY_VECTOR of ``bits`` dims, the packed bytes as made by ``pack_codes``; Hamming distance
does not depend on the bit order within a byte, so the bytes go to Milvus as they are).

Exactness and ties: Milvus (BIN_FLAT, metric HAMMING) returns the exact k smallest distances, but orders ties
arbitrarily, and at the k-th distance it may pick any of the tied items. The project's order is (distance,
insertion order), so each query asks for ``k + tie_slack`` candidates, and widens the request (doubling) until the
last candidate is strictly farther than the k-th — then every item tied at the k-th distance is among the
candidates, and a client-side sort by (distance, seq) gives exactly what ``FlatIndex`` gives. ``range_search`` uses
the same widening until a candidate lies beyond the radius. Milvus caps one request at ``MILVUS_MAX_TOPK`` results;
a query whose ties (or range) need more raises MCMFHError rather than return an inexact answer.

``BIN_IVF_FLAT`` (``index_type="BIN_IVF_FLAT"``, ``nlist``, ``nprobe``) probes only some clusters, so it is not
exact; ``benchmarks/scale.py`` measures its recall. One writer at a time: the next id/seq are cached client-side,
so a writer calls ``refresh()`` under the archive's writer lock before each change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from mcmfh.errors import MCMFHError
from mcmfh.index.base import from_words, to_words

MILVUS_MAX_TOPK = 16384  # Milvus 2.3 rejects a search or query limit above this
DEFAULT_URI = "http://127.0.0.1:19530"
INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as e:
        raise MCMFHError("the milvus backend needs pymilvus: pip install 'mcmfh[scale]'") from e
    return pymilvus


class MilvusIndex:
    """Exact (BIN_FLAT) Hamming k-NN and range search in a Milvus collection; ids are non-negative int64."""

    kind = "milvus"

    def __init__(
        self,
        bits: int,
        uri: str = DEFAULT_URI,
        collection: str = "mcmfh_codes",
        index_type: str = "BIN_FLAT",
        nlist: int = 1024,
        nprobe: int = 16,
        tie_slack: int = 16,
        connect_timeout: float = 5.0,
        insert_batch: int = 50_000,
        token: str | None = None,
    ) -> None:
        if bits <= 0 or bits % 8:
            raise MCMFHError(f"index: bits must be a positive multiple of 8, got {bits}")
        self.bits = int(bits)
        if index_type not in INDEX_TYPES:
            raise MCMFHError(f"milvus: index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        self.uri, self.collection_name, self.index_type = uri, collection, index_type
        self.nlist, self.nprobe, self.tie_slack, self.insert_batch = (
            int(nlist),
            int(nprobe),
            int(tie_slack),
            insert_batch,
        )
        pm = _pymilvus()
        self._pm = pm
        self._alias = f"mcmfh-{id(self)}"
        try:
            auth = {"token": token} if token else {}  # "user:password" or an API key, for a secured cluster
            pm.connections.connect(alias=self._alias, uri=uri, timeout=connect_timeout, **auth)
        except Exception as e:  # pymilvus raises MilvusException or grpc errors; the message is what matters
            raise MCMFHError(f"milvus: cannot connect to {uri} within {connect_timeout:g} s ({e})") from e
        self._coll = self._open_or_create()
        self._next_seq: int | None = None
        self._next_id: int | None = None

    # ---------------------------------------------------------------- collection
    def _open_or_create(self) -> Any:
        pm, name = self._pm, self.collection_name
        with _errors("open collection"):
            if pm.utility.has_collection(name, using=self._alias):
                coll = pm.Collection(name, using=self._alias)
                field = {f.name: f for f in coll.schema.fields}.get("code")
                dim = None if field is None else field.params.get("dim")
                if field is None or "seq" not in {f.name for f in coll.schema.fields} or int(dim) != self.bits:
                    raise MCMFHError(
                        f"milvus: collection {name!r} at {self.uri} is not a {self.bits}-bit mcmfh index "
                        f"(code field dim {dim}); choose another collection"
                    )
            else:
                fields = [
                    pm.FieldSchema("id", pm.DataType.INT64, is_primary=True, auto_id=False),
                    pm.FieldSchema("seq", pm.DataType.INT64),
                    pm.FieldSchema("code", pm.DataType.BINARY_VECTOR, dim=self.bits),
                ]
                schema = pm.CollectionSchema(fields, description=f"mcmfh {self.bits}-bit codes")
                coll = pm.Collection(name, schema, using=self._alias, consistency_level="Strong")
                params = {"nlist": self.nlist} if self.index_type == "BIN_IVF_FLAT" else {}
                coll.create_index("code", {"index_type": self.index_type, "metric_type": "HAMMING", "params": params})
            coll.load()
        return coll

    def params(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "collection": self.collection_name,
            "index_type": self.index_type,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
        }

    def write(self, path: Any) -> None:
        """Not a file format: the codes live on the server, and ``read`` would re-add them to the same collection."""
        raise MCMFHError(
            f"milvus: the index lives in collection {self.collection_name!r} at {self.uri}; reopen it with "
            "open_backend('milvus', bits, uri=..., collection=...) instead of writing it to a folder"
        )

    def drop(self) -> None:
        """Delete the collection on the server (all codes)."""
        with _errors("drop collection"):
            self._coll.drop()
        self._next_seq = self._next_id = None

    def flush(self) -> None:
        """Seal what was inserted and wait until the server has indexed it (searches are then at indexed speed)."""
        with _errors("flush"):
            self._coll.flush()
            self._pm.utility.wait_for_index_building_complete(self.collection_name, using=self._alias)
            # Reload so the query nodes serve the sealed, indexed segments rather than the growing ones.
            self._coll.release()
            self._coll.load()

    def close(self) -> None:
        self._pm.connections.disconnect(self._alias)

    # ---------------------------------------------------------------- counts and ids
    def __len__(self) -> int:
        with _errors("count"):
            return int(self._coll.query(expr="", output_fields=["count(*)"])[0]["count(*)"])

    @property
    def ntotal(self) -> int:
        return len(self)

    def _exists(self, expr: str) -> bool:
        return bool(self._coll.query(expr=expr, output_fields=["id"], limit=1))

    def _next_value(self, field: str) -> int:
        """max(field) + 1 over the collection (0 if empty) by exponential then binary search: Milvus 2.3 has no MAX."""
        if not self._exists(f"{field} >= 0"):
            return 0
        lo, hi = 0, 1  # invariant: some value >= lo exists
        while self._exists(f"{field} >= {hi}"):
            lo, hi = hi, hi * 2
        while hi - lo > 1:  # none >= hi
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self._exists(f"{field} >= {mid}") else (lo, mid)
        return hi

    def _query_all(self, fields: list[str]) -> list[dict[str, Any]]:
        """Every row, in seq order, fetched in seq windows under the server's query limit."""
        rows: list[dict[str, Any]] = []
        end = self._next_value("seq")
        for lo in range(0, end, MILVUS_MAX_TOPK):
            expr = f"seq >= {lo} and seq < {lo + MILVUS_MAX_TOPK}"
            rows += self._coll.query(expr=expr, output_fields=["seq", *fields], limit=MILVUS_MAX_TOPK)
        return sorted(rows, key=lambda r: r["seq"])

    @property
    def ids(self) -> np.ndarray:
        with _errors("list ids"):
            return np.array([r["id"] for r in self._query_all(["id"])], dtype=np.int64)

    @property
    def codes(self) -> np.ndarray:
        """Every stored code, packed uint8 (N, bits // 8), in insertion order (read back from the server)."""
        with _errors("read codes"):
            rows = self._query_all(["code"])
        packed = np.array([np.frombuffer(_as_bytes(r["code"]), np.uint8) for r in rows], np.uint8)
        return packed.reshape(len(rows), self.bits // 8)

    def nbytes(self) -> int:
        """Memory held in this process: none (the codes are on the server)."""
        return 0

    # ---------------------------------------------------------------- changes
    def refresh(self) -> None:
        """Forget the cached next seq/id: another process may have added since (call under the writer lock)."""
        self._next_seq = self._next_id = None

    def add(self, codes: np.ndarray, ids: np.ndarray | None = None) -> None:
        packed = from_words(to_words(codes, self.bits), self.bits)  # validates shape and dtype
        n_new = packed.shape[0]
        with _errors("add"):
            if self._next_seq is None:
                self._next_seq = self._next_value("seq")
            if ids is None:
                if self._next_id is None:
                    self._next_id = self._next_value("id")
                new_ids = np.arange(self._next_id, self._next_id + n_new, dtype=np.int64)
            else:
                new_ids = np.asarray(ids)
                if new_ids.shape != (n_new,) or not np.issubdtype(new_ids.dtype, np.integer):
                    raise MCMFHError(f"index: ids must be {n_new} integers, got shape {new_ids.shape} {new_ids.dtype}")
                new_ids = new_ids.astype(np.int64)
                if n_new and new_ids.min() < 0:
                    raise MCMFHError("milvus: ids must be >= 0")
                if len(np.unique(new_ids)) != n_new or self._existing(new_ids).size:
                    raise MCMFHError("index: ids must be unique (some are repeated or already in the index)")
            if n_new == 0:
                return
            seq = np.arange(self._next_seq, self._next_seq + n_new, dtype=np.int64)
            for lo in range(0, n_new, self.insert_batch):
                sl = slice(lo, lo + self.insert_batch)
                self._coll.insert([new_ids[sl].tolist(), seq[sl].tolist(), [r.tobytes() for r in packed[sl]]])
            self._next_seq += n_new
            top = int(new_ids.max()) + 1
            self._next_id = top if self._next_id is None else max(self._next_id, top)

    def _existing(self, ids: np.ndarray) -> np.ndarray:
        found: list[int] = []
        for lo in range(0, len(ids), MILVUS_MAX_TOPK):
            part = ids[lo : lo + MILVUS_MAX_TOPK].tolist()
            found += [r["id"] for r in self._coll.query(expr=f"id in {part}", output_fields=["id"])]
        return np.array(found, np.int64)

    def remove_ids(self, ids: np.ndarray) -> int:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        with _errors("remove"):
            present = self._existing(ids)
            for lo in range(0, len(present), MILVUS_MAX_TOPK):
                self._coll.delete(expr=f"id in {present[lo : lo + MILVUS_MAX_TOPK].tolist()}")
        return int(present.size)

    # ---------------------------------------------------------------- search
    def _candidates(self, packed: np.ndarray, limit: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per query: (distances, ids, seqs) of the ``limit`` nearest, sorted by (distance, seq)."""
        param: dict[str, Any] = {"metric_type": "HAMMING", "params": {}}
        if self.index_type == "BIN_IVF_FLAT":
            param["params"] = {"nprobe": self.nprobe}
        with _errors("search"):
            res = self._coll.search(
                data=[r.tobytes() for r in packed], anns_field="code", param=param, limit=limit, output_fields=["seq"]
            )
        out = []
        for hits in res:
            d = np.rint(np.asarray(hits.distances, np.float64)).astype(np.int32)
            i = np.asarray(hits.ids, np.int64)
            s = np.array([h.entity.get("seq") for h in hits], np.int64)
            order = np.lexsort((s, d))
            out.append((d[order], i[order], s[order]))
        return out

    def _widen(self, packed: np.ndarray, first: int, done: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Candidates per query, re-asking with doubled limits until ``done(cands, limit)`` holds for each query."""
        results: list[Any] = [None] * packed.shape[0]
        todo, limit = np.arange(packed.shape[0]), min(first, MILVUS_MAX_TOPK)
        while todo.size:
            cands = self._candidates(packed[todo], limit)
            again = []
            for q, c in zip(todo, cands, strict=True):
                results[q] = c
                if not (len(c[0]) < limit or done(c)):  # fewer than asked: the whole collection was returned
                    again.append(q)
            if again and limit == MILVUS_MAX_TOPK:
                raise MCMFHError(
                    f"milvus: a query needs more than {MILVUS_MAX_TOPK} candidates (ties or range); "
                    "use a smaller k/radius or the local index"
                )
            todo, limit = np.array(again, np.int64), min(limit * 2, MILVUS_MAX_TOPK)
        return results

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact k nearest per packed query: distances int32 (Q, k), ids int64 (Q, k), -1 where fewer than k;
        ties in insertion order (see the module docstring)."""
        if k < 1:
            raise MCMFHError(f"search: k must be >= 1, got {k}")
        packed = from_words(to_words(queries, self.bits, "queries"), self.bits)
        out_d = np.full((packed.shape[0], k), -1, np.int32)
        out_i = np.full((packed.shape[0], k), -1, np.int64)
        if k > MILVUS_MAX_TOPK:
            raise MCMFHError(f"milvus: k must be <= {MILVUS_MAX_TOPK}, got {k}")
        # Exact once the last candidate is strictly farther than the k-th: no tie at the k-th was left out.
        cands = self._widen(packed, k + self.tie_slack, lambda c: c[0][-1] > c[0][k - 1])
        for j, (d, i, _) in enumerate(cands):
            m = min(k, len(d))
            out_d[j, :m], out_i[j, :m] = d[:m], i[:m]
        return out_d, out_i

    def range_search(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All items within ``radius`` per packed query: (lims (Q+1,), distances, ids), as ``HammingIndex``."""
        if radius < 0:
            raise MCMFHError(f"range_search: radius must be >= 0, got {radius}")
        radius = min(int(radius), self.bits)
        packed = from_words(to_words(queries, self.bits, "queries"), self.bits)
        cands = self._widen(packed, 64 + self.tie_slack, lambda c: c[0][-1] > radius)
        keep = [c[0] <= radius for c in cands]
        lims = np.concatenate([[0], np.cumsum([int(m.sum()) for m in keep])]).astype(np.int64)
        dist = np.concatenate([c[0][m] for c, m in zip(cands, keep, strict=True)] or [np.zeros(0, np.int32)])
        ids = np.concatenate([c[1][m] for c, m in zip(cands, keep, strict=True)] or [np.zeros(0, np.int64)])
        return lims, dist.astype(np.int32), ids.astype(np.int64)


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """Turn server/client failures into one-line MCMFHErrors naming the operation."""
    try:
        yield
    except MCMFHError:
        raise
    except Exception as e:  # pymilvus raises MilvusException and grpc errors; the message is what matters
        raise MCMFHError(f"milvus: {what} failed ({type(e).__name__}: {e})") from e


def _as_bytes(v: Any) -> bytes:
    """A binary vector as the query API returns it (bytes, or a list holding one bytes object)."""
    if isinstance(v, list):
        v = v[0]
    return bytes(v)
