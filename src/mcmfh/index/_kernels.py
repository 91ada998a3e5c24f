"""Numba kernels behind the Hamming indexes.

Codes arrive here as uint64 words (N, W), bit i of the code = bit i % 64 of word i // 64 (the little-endian view
of ``pack_codes`` output). Every kernel loops over queries inside numba (``prange``: one query per task, no Python
per query) and returns positions, i.e. insertion order; the Python layer maps positions to ids.

Ties are broken by position everywhere, so results equal a stable sort of brute-force distances.
Measured (benchmarks/search.py): the jitted loops are 10-100x faster than the numpy equivalents because the
bucket walk and the MIH candidate check are branchy, per-item work that numpy cannot vectorise. The bucket index's
k-NN walk is in ``mcmfh.index._bucket_walk``; its range search and XOR masks are here.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from mcmfh.index._intrinsics import ctpop as _ctpop
from mcmfh.index.numba_threads import ensure_started

ensure_started()  # before any parallel kernel runs: numba's pool must not change torch's thread count


@njit(inline="always")
def _dist(db, p, q, i):
    d = 0
    for w in range(db.shape[1]):
        d += _ctpop(db[p, w] ^ q[i, w])
    return d


@njit(inline="always")
def _next_same_popcount(v):
    """Gosper's hack: the next larger integer with the same number of set bits."""
    c = v & -v
    r = v + c
    return (((r ^ v) >> 2) // c) | r


# --------------------------------------------------------------------------------------------------------- CSR build
@njit(cache=True)
def csr_build(keys, n_keys):
    """Counting sort of ``keys`` (int64 in [0, n_keys)): int32 offsets (n_keys+1,) and positions (N,), stable."""
    offsets = np.zeros(n_keys + 1, np.int32)  # items are capped at 2^31 - 1
    for key in keys:
        offsets[key + 1] += 1
    for b in range(n_keys):
        offsets[b + 1] += offsets[b]
    fill = offsets[:-1].copy()
    positions = np.empty(keys.shape[0], np.int32)
    for n in range(keys.shape[0]):
        key = keys[n]
        positions[fill[key]] = n
        fill[key] += 1
    return offsets, positions


@njit(cache=True)
def csr_keys(offsets, positions):
    """Inverse of csr_build: the key of every position."""
    keys = np.empty(positions.shape[0], np.int64)
    for b in range(offsets.shape[0] - 1):
        for t in range(offsets[b], offsets[b + 1]):
            keys[positions[t]] = b
    return keys


# ------------------------------------------------------------------------------------------------------------- flat
@njit(inline="always")
def _emit_sorted(cd, cp, nc, tau, kk, out_d, out_p, i):
    """Write the kk smallest (distance, position) pairs among the first nc candidates with distance <= tau."""
    keys = np.empty(nc, np.int64)
    w = 0
    for c in range(nc):
        if cd[c] <= tau:
            keys[w] = (cd[c] << 32) | cp[c]  # distances < 2^8, positions < 2^31
            w += 1
    keys = np.sort(keys[:w])
    for c in range(min(kk, w)):
        out_d[i, c] = keys[c] >> 32
        out_p[i, c] = keys[c] & 0xFFFFFFFF


@njit(inline="always")
def _emit_in_arrival_order(cd, cp, nc, tau, kk, out_d, out_p, i):
    """Like _emit_sorted when candidates arrived in position order (the scan): a stable counting sort by distance,
    no comparisons (a comparison sort of ~1000 random keys mispredicts its way to tens of microseconds)."""
    start = np.zeros(tau + 2, np.int64)
    for c in range(nc):
        if cd[c] <= tau:
            start[cd[c] + 1] += 1
    for d in range(tau + 1):
        start[d + 1] += start[d]
    for c in range(nc):
        d = cd[c]
        if d <= tau:
            slot = start[d]
            start[d] += 1
            if slot < kk:
                out_d[i, slot] = d
                out_p[i, slot] = cp[c]


@njit(cache=True)
def _compact_in_place(cd, cp, nc, tau):
    """Drop candidates beyond tau; returns the new count."""
    w = 0
    for c in range(nc):
        if cd[c] <= tau:
            cd[w] = cd[c]
            cp[w] = cp[c]
            w += 1
    return w


@njit(inline="always")
def _tighten(hist, cnt, tau, kk, d):
    """Count a kept candidate at distance d and keep tau equal to the k-th kept distance: tau drops while the
    candidates strictly below it already number kk (``cnt`` counts kept candidates within tau)."""
    hist[d] += 1
    cnt += 1
    while tau > 0 and cnt - hist[tau] >= kk:
        cnt -= hist[tau]
        hist[tau] = 0
        tau -= 1
    return cnt, tau


_SCAN_BLOCK = 64  # small enough that, once tau is tight, most blocks have no hit and are read only once


@njit(inline="always")
def _block_hits(db, q, i, q0, one_word, start, end, lim):
    """How many items in [start, end) are at distance < lim; the one-word case compiles to vectorised popcounts."""
    # Unsigned loop indices: numba then skips negative-index wraparound, and LLVM vectorises the popcounts (8x).
    h = 0
    if one_word:
        for p in range(np.uint64(start), np.uint64(end)):
            if _ctpop(db[p, 0] ^ q0) < lim:
                h += 1
    else:
        for p in range(np.uint64(start), np.uint64(end)):
            if _dist(db, p, q, i) < lim:
                h += 1
    return h


@njit(cache=True)
def _scan_query(db, q, i, kk, tau, out_d, out_p):
    # Two copies with a constant ``one_word``, so LLVM drops the multi-word branch from the hot loops.
    if db.shape[1] == 1:
        _scan_impl(db, q, i, kk, tau, out_d, out_p, True)
    else:
        _scan_impl(db, q, i, kk, tau, out_d, out_p, False)


@njit(inline="always")
def _scan_impl(db, q, i, kk, tau, out_d, out_p, one_word):
    """Exact top-kk of query i by one scan in position order that keeps only items within a shrinking bound.

    ``tau`` starts at any upper bound of the k-th distance. Since items arrive in position order, a tie at tau is
    only useful while fewer than kk candidates are kept, so the acceptance limit is tau + 1 until then and tau
    afterwards. A block of items is first only counted against the limit (no branches, vectorised); the blocks
    with hits are read again, and each hit is kept and lowers tau (``_tighten``).
    """
    hist = np.zeros(db.shape[1] * 64 + 1, np.int64)
    # At most kk + 1 kept candidates are within tau (a tie at tau is only taken while fewer than kk are kept), so
    # compaction always frees half of this buffer and it never grows. Fixed buffers also matter for speed: arrays
    # reassigned inside the loop made numba reference-count them per item (measured 4.5x slower).
    cap = max(4 * kk + 4, 1024)
    cd = np.empty(cap, np.int64)
    cp = np.empty(cap, np.int64)
    nc = 0
    cnt = 0
    n = db.shape[0]
    q0 = q[i, 0]
    for start in range(0, n, _SCAN_BLOCK):
        end = min(n, start + _SCAN_BLOCK)
        lim = tau + 1 if cnt < kk else tau
        if _block_hits(db, q, i, q0, one_word, start, end, lim) == 0:
            continue
        for up in range(np.uint64(start), np.uint64(end)):
            d = _ctpop(db[up, 0] ^ q0) if one_word else _dist(db, up, q, i)
            if d < tau or (d == tau and cnt < kk):
                if nc == cap:
                    nc = _compact_in_place(cd, cp, nc, tau)
                cd[nc] = d
                cp[nc] = np.int64(up)
                nc += 1
                cnt, tau = _tighten(hist, cnt, tau, kk, d)
    _emit_in_arrival_order(cd, cp, nc, tau, kk, out_d, out_p, i)


@njit(parallel=True, cache=True)
def flat_knn(db, q, k, out_d, out_p):
    kk = min(k, db.shape[0])
    if kk == 0:
        return
    for i in prange(q.shape[0]):
        _scan_query(db, q, i, kk, db.shape[1] * 64, out_d, out_p)


@njit(cache=True)
def flat_knn_serial(db, q, k, out_d, out_p):
    kk = min(k, db.shape[0])
    for i in range(q.shape[0]):
        _scan_query(db, q, i, kk, db.shape[1] * 64, out_d, out_p)


@njit(parallel=True, cache=True)
def flat_range_count(db, q, radius, counts):
    for i in prange(q.shape[0]):
        c = 0
        for p in range(db.shape[0]):
            if _dist(db, p, q, i) <= radius:
                c += 1
        counts[i] = c


@njit(parallel=True, cache=True)
def flat_range_fill(db, q, radius, lims, out_d, out_p):
    """Fill each query's slice lims[i]:lims[i+1] with its matches ordered by (distance, position)."""
    for i in prange(q.shape[0]):
        start = lims[i]
        fill = np.zeros(radius + 2, np.int64)
        for p in range(db.shape[0]):
            d = _dist(db, p, q, i)
            if d <= radius:
                fill[d + 1] += 1
        for d in range(radius + 1):
            fill[d + 1] += fill[d]
        for p in range(db.shape[0]):
            d = _dist(db, p, q, i)
            if d <= radius:
                out_d[start + fill[d]] = d
                out_p[start + fill[d]] = p
                fill[d] += 1


# ------------------------------------------------------------------------------------ bucket (range search, masks)
@njit(cache=True)
def masks_by_popcount(bits):
    """All ``bits``-bit XOR masks ordered by popcount, and where each popcount level starts."""
    n = 1 << bits
    level_start = np.zeros(bits + 2, np.int64)
    pc = np.empty(n, np.int64)
    for v in range(n):
        pc[v] = _ctpop(np.uint64(v))
        level_start[pc[v] + 1] += 1
    for d in range(bits + 1):
        level_start[d + 1] += level_start[d]
    fill = level_start[:-1].copy()
    masks = np.empty(n, np.int64)
    for v in range(n):
        masks[fill[pc[v]]] = v
        fill[pc[v]] += 1
    return masks, level_start


@njit(parallel=True, cache=True)
def bucket_range_count(offsets, masks, level_start, q, radius, counts):
    for i in prange(q.shape[0]):
        c = 0
        for m in range(level_start[min(radius + 1, level_start.shape[0] - 1)]):
            b = q[i] ^ masks[m]
            c += offsets[b + 1] - offsets[b]
        counts[i] = c


@njit(parallel=True, cache=True)
def bucket_range_fill(offsets, positions, masks, level_start, q, radius, lims, out_d, out_p):
    n_levels = min(radius + 1, level_start.shape[0] - 1)
    for i in prange(q.shape[0]):
        c = lims[i]
        for d in range(n_levels):
            first = c
            for m in range(level_start[d], level_start[d + 1]):
                b = q[i] ^ masks[m]
                for t in range(offsets[b], offsets[b + 1]):
                    out_d[c] = d
                    out_p[c] = positions[t]
                    c += 1
            out_p[first:c].sort()


# -------------------------------------------------------------------------------------------------------------- MIH
@njit(cache=True)
def _mih_query(
    db,
    sub_word,
    sub_shift,
    sub_len,
    table_start,
    offsets,
    positions,
    tcodes,
    q,
    i,
    kk,
    scan_after,
    out_d,
    out_p,
    scanned,
):
    """One query of ``mih_knn`` (a plain function, so the parallel loop around it stays simple)."""
    n = db.shape[0]
    m = sub_word.shape[0]
    max_r = 0
    for j in range(m):
        max_r = max(max_r, sub_len[j])
    hist = np.zeros(db.shape[1] * 64 + 1, np.int64)
    cap = max(8 * kk, 1024)
    cd = np.empty(cap, np.int64)
    cp = np.empty(cap, np.int64)
    nc = 0
    cnt = 0
    tau = db.shape[1] * 64
    seen = 0
    touched = 0
    overflow = False
    for r in range(max_r + 1):
        for j in range(m):
            L = sub_len[j]
            if r > L:
                continue
            lmask = (np.uint64(1) << np.uint64(L)) - np.uint64(1)
            key = np.int64((q[i, sub_word[j]] >> np.uint64(sub_shift[j])) & lmask)
            base = table_start[j]
            pbase = j * n
            v = np.int64((1 << r) - 1)
            limit = np.int64(1) << L
            while v < limit:
                b = base + (key ^ v)
                touched += 1 + offsets[b + 1] - offsets[b]  # empty buckets cost a lookup too
                for t in range(offsets[b], offsets[b + 1]):
                    e = pbase + t  # tcodes holds each table's codes in bucket order: sequential reads
                    new = True
                    for o in range(m):
                        if o == j:
                            continue
                        omask = (np.uint64(1) << np.uint64(sub_len[o])) - np.uint64(1)
                        x = (tcodes[e, sub_word[o]] ^ q[i, sub_word[o]]) >> np.uint64(sub_shift[o])
                        sd = _ctpop(x & omask)
                        if (o < j and sd <= r) or (o > j and sd < r):
                            new = False
                            break
                    if new:
                        seen += 1
                        d = _dist(tcodes, e, q, i)
                        if d <= tau:  # arrival is not in position order here: ties at tau must all be kept
                            if nc == cap:
                                nc = _compact_in_place(cd, cp, nc, tau)
                                if nc * 2 > cap:  # mostly ties: leave them to the scan, whose buffer is bounded
                                    overflow = True
                                    break
                            cd[nc] = d
                            cp[nc] = np.int64(positions[e])
                            nc += 1
                            cnt, tau = _tighten(hist, cnt, tau, kk, d)
                if r == 0 or overflow:
                    break
                v = _next_same_popcount(v)
            if not overflow and ((cnt >= kk and tau <= m * r + j) or seen == n):
                _emit_sorted(cd, cp, nc, tau, kk, out_d, out_p, i)
                return
            if touched > scan_after or overflow:
                # tau bounds the k-th distance (it is the k-th among items found) or is still the code length
                scanned[i] = 1
                _scan_query(db, q, i, kk, tau, out_d, out_p)
                return
    _emit_sorted(cd, cp, nc, tau, kk, out_d, out_p, i)


@njit(parallel=True, cache=True)
def mih_knn(
    db, sub_word, sub_shift, sub_len, table_start, offsets, positions, tcodes, q, k, scan_after, out_d, out_p, scanned
):
    """Multi-index hashing (Norouzi, Punjani & Fleet, 2014), exact k-NN.

    The code is cut into m substrings, each with its own bucket table. Radius r is searched table by table; after
    tables 0..j at radius r (the rest at r-1) every item with distance <= m*r + j has been seen (pigeonhole), so
    the search stops once the k-th best distance is within that bound. An item met in table j at radius r is new
    only if its substring distance is > r in tables before j and >= r in tables after j: no visited set needed.
    A query whose walk has touched ``scan_after`` bucket entries without finishing (codes far from everything,
    e.g. random 64-bit codes) switches to the bounded scan, starting from the k-th distance found so far, and is
    marked in ``scanned``.
    """
    kk = min(k, db.shape[0])
    if kk == 0:
        return
    for i in prange(q.shape[0]):
        _mih_query(
            db,
            sub_word,
            sub_shift,
            sub_len,
            table_start,
            offsets,
            positions,
            tcodes,
            q,
            i,
            kk,
            scan_after,
            out_d,
            out_p,
            scanned,
        )


@njit(cache=True)
def mih_knn_serial(
    db, sub_word, sub_shift, sub_len, table_start, offsets, positions, tcodes, q, k, scan_after, out_d, out_p, scanned
):
    kk = min(k, db.shape[0])
    for i in range(q.shape[0]):
        if kk > 0:
            _mih_query(
                db,
                sub_word,
                sub_shift,
                sub_len,
                table_start,
                offsets,
                positions,
                tcodes,
                q,
                i,
                kk,
                scan_after,
                out_d,
                out_p,
                scanned,
            )


# ------------------------------------------------------------------------------------------------ blocked multi-query
# A tile of queries shares each chunk of the database while the chunk is in L1/L2: one query at a time streams the
# whole database from L3/DRAM per query (8 MB at 1e6 64-bit codes), which bounds the single-query scan by memory
# bandwidth; tiled, the database is read once per tile and the popcounts (AVX-512 VPOPCNTQ here) become the limit.
BLOCK_QUERIES = 16
BLOCK_ITEMS = 8192  # 64 KiB of 64-bit codes: stays in L2 while the tile's queries scan it


@njit(inline="always")
def _tile_scan(db, q, i, start, end, one_word, kk, st, hist, cd, cp):
    """Advance query i's bounded scan over [start, end) (the state of ``_scan_impl`` kept in arrays between chunks:
    st = [tau, cnt, nc])."""
    tau, cnt, nc = st[0], st[1], st[2]
    cap = cd.shape[0]
    q0 = q[i, 0]
    for s in range(start, end, _SCAN_BLOCK):
        e = min(end, s + _SCAN_BLOCK)
        lim = tau + 1 if cnt < kk else tau
        if _block_hits(db, q, i, q0, one_word, s, e, lim) == 0:
            continue
        for up in range(np.uint64(s), np.uint64(e)):
            d = _ctpop(db[up, 0] ^ q0) if one_word else _dist(db, up, q, i)
            if d < tau or (d == tau and cnt < kk):
                if nc == cap:
                    nc = _compact_in_place(cd, cp, nc, tau)
                cd[nc] = d
                cp[nc] = np.int64(up)
                nc += 1
                cnt, tau = _tighten(hist, cnt, tau, kk, d)
    st[0], st[1], st[2] = tau, cnt, nc


@njit(inline="always")
def _tile_impl(db, q, qs, tau0, kk, out_d, out_p, one_word):
    nq = qs.shape[0]
    cap = max(4 * kk + 4, 1024)
    st = np.zeros((nq, 3), np.int64)
    hist = np.zeros((nq, db.shape[1] * 64 + 1), np.int64)
    cd = np.empty((nq, cap), np.int64)
    cp = np.empty((nq, cap), np.int64)
    for t in range(nq):
        st[t, 0] = tau0[qs[t]]
    n = db.shape[0]
    for start in range(0, n, BLOCK_ITEMS):
        end = min(n, start + BLOCK_ITEMS)
        for t in range(nq):
            _tile_scan(db, q, qs[t], start, end, one_word, kk, st[t], hist[t], cd[t], cp[t])
    for t in range(nq):
        _emit_in_arrival_order(cd[t], cp[t], st[t, 2], st[t, 0], kk, out_d, out_p, qs[t])


@njit(cache=True)
def _tile(db, q, qs, tau0, kk, out_d, out_p):
    if db.shape[1] == 1:
        _tile_impl(db, q, qs, tau0, kk, out_d, out_p, True)
    else:
        _tile_impl(db, q, qs, tau0, kk, out_d, out_p, False)


@njit(parallel=True, cache=True)
def blocked_knn(db, q, qs, tau0, k, out_d, out_p):
    """Exact top-k for the queries ``qs`` (rows of q) by one bounded scan per tile of BLOCK_QUERIES queries.

    ``tau0[i]`` is an upper bound of query i's k-th distance (the code length, or what an MIH walk found). Each
    query sees items in position order, exactly as in ``_scan_impl``, so ties follow insertion order."""
    kk = min(k, db.shape[0])
    if kk == 0:
        return
    n_tiles = -(-qs.shape[0] // BLOCK_QUERIES)
    for b in prange(n_tiles):
        _tile(db, q, qs[b * BLOCK_QUERIES : min(qs.shape[0], (b + 1) * BLOCK_QUERIES)], tau0, kk, out_d, out_p)
