"""Load benchmark of the search service: concurrent clients against a real uvicorn server on 127.0.0.1.

    python benchmarks/load.py                # 32 clients, 60 s, synthetic engine
    python benchmarks/load.py --quick        # 10 s
    python benchmarks/load.py --index IDX    # a real index (mcmfh.service.archive_engine.open_engine)

The server runs in its own process (as in production), the clients in this one, mixing text and image queries.
Everything is bounded: the clients stop at the deadline, each request has a timeout, the server is terminated at
the end. Prints a table (q/s, p50/p99 latency, errors) and writes JSON. The output always says which engine
answered: the synthetic engine measures the service and Hamming search, not a trained model's encoders.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import multiprocessing as mp
import os
import platform
import re
import socket
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

QUERY_WORDS = (
    "axial", "sagittal", "coronal", "CT", "MR", "T1", "T2", "FLAIR", "contrast", "brain", "liver", "lung", "spine",
    "kidney", "hemorrhage", "lesion", "mass", "ring-enhancing", "frontal", "temporal", "lobe", "fracture", "abscess",
    "edema", "infarct", "tumour", "cyst", "nodule", "effusion", "pneumonia",
)  # fmt: skip


@dataclass(frozen=True)
class Config:
    clients: int
    duration_s: float
    warmup_s: float
    image_fraction: float
    k: int
    request_timeout_s: float
    items: int
    bits: int
    seed: int
    index: str | None
    images: str | None
    access_log: str
    search_threads: int | None = None  # None: the service default
    client: str = "raw"  # "raw": the minimal keep-alive client below; "httpx": httpx.AsyncClient (as before)
    batch_queries: bool = True  # False: the engine encodes one query at a time under its lock (MCMFH_BATCH_QUERIES=0)


# --- synthetic engine (server side) -------------------------------------------------------------------------------


class SyntheticEngine:
    """Random packed codes for ``items`` entries; queries are hashed to codes (SimHash of words, or of a 16x16 grey
    thumbnail) and ranked by exact Hamming distance with the project's packed-code kernel."""

    def __init__(self, items: int, bits: int, seed: int) -> None:
        from mcmfh.index.codes import pack_codes

        rng = np.random.default_rng(seed)
        self.bits = bits
        self.codes = pack_codes(rng.random((items, bits)) < 0.5)
        self.planes = rng.normal(size=(16 * 16, bits))

    def info(self):
        from mcmfh.service.engine import EngineInfo

        return EngineInfo(method="synthetic", bits=self.bits, encoder="simhash", items=len(self.codes), name="bench")

    def _rank(self, bits: np.ndarray, k: int):
        from mcmfh.index.codes import hamming_matrix, pack_codes
        from mcmfh.items import Hit, Item

        distances = hamming_matrix(pack_codes(bits[None]), self.codes)[0]
        top = np.argpartition(distances, min(k, len(distances) - 1))[:k]
        top = top[np.lexsort((top, distances[top]))]
        items = [Item(f"item{j}", None, f"synthetic item {j}", ("tag",), source="bench", key=int(j)) for j in top]
        return [Hit(item, int(distances[j])) for item, j in zip(items, top, strict=True)]

    def search_text(self, query: str, k: int):
        total = np.zeros(self.bits)
        for word in query.lower().split():
            seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
            total += np.random.default_rng(seed).normal(size=self.bits)
        return self._rank(total > 0, k)

    def search_image(self, image, k: int):
        grey = np.asarray(image.convert("L").resize((16, 16)), dtype=np.float64).ravel()
        return self._rank(((grey - grey.mean()) @ self.planes) > 0, k)

    def get_item(self, item_id: str):
        return None

    def image_path(self, item_id: str):
        return None

    def study_metadata(self, item_ids: list[str]) -> dict[str, dict[str, str]]:
        return {}

    def facets(self) -> dict[str, list[str]]:
        return {"modality": [], "body_part": []}


def serve(config: Config, port: int, log_path: str) -> None:
    """Server process: build the engine, then run uvicorn until terminated; its logs go to ``log_path``."""
    sys.stderr = sys.stdout = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    from mcmfh.service.app import create_app
    from mcmfh.service.archive_engine import open_engine
    from mcmfh.service.server import make_server
    from mcmfh.service.settings import Settings

    if not config.batch_queries:
        os.environ["MCMFH_BATCH_QUERIES"] = "0"
    if config.index:
        # The old configuration also leaves torch on all cores (as before set_torch_threads existed).
        torch_threads = 1 if config.batch_queries else None
        engine, root = open_engine(config.index, torch_threads=torch_threads), Path(config.index).resolve()
    else:
        engine, root = SyntheticEngine(config.items, config.bits, config.seed), None
    threads = {"search_threads": config.search_threads} if config.search_threads else {}
    settings = Settings(image_root=root, max_k=max(config.k, 1), access_log=config.access_log, **threads)  # type: ignore[arg-type]
    make_server(create_app(engine, settings), "127.0.0.1", port).run()


# --- clients ---------------------------------------------------------------------------------------------------------


def query_images(folder: str | None, seed: int, count: int = 16) -> list[tuple[str, bytes]]:
    """Real image files from ``folder`` (first ``count`` PNG/JPEG/DICOM files), else generated 256x256 PNGs."""
    if folder:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".dcm"})
        if not files:
            raise SystemExit(f"--images {folder}: no .png/.jpg/.dcm files")
        return [(p.name, p.read_bytes()) for p in files[:count]]
    from PIL import Image

    rng, out = np.random.default_rng(seed), []
    for i in range(count):
        blocks = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(blocks, mode="L").resize((256, 256), Image.Resampling.BILINEAR).save(buf, format="PNG")
        out.append((f"q{i}.png", buf.getvalue()))
    return out


def process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads) from /proc; None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Connection:
    """A minimal HTTP/1.1 keep-alive client on one socket: prebuilt request bodies, Content-Length responses.

    The load generator shares the server's cores on a small machine, so its own CPU per request counts against the
    server's: httpx spent 7-10 ms of CPU per request here (a failed ``import sniffio`` per request among it),
    about a third of what the server spent; this spends well under 1 ms. ``--client httpx`` keeps the old one."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", content_type: str = "") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        try:
            self.writer.write(head.encode() + b"\r\n" + body)
            status_line, *lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines if ": " in line)
            data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            self.close()  # a half-read response leaves the connection unusable
            raise
        if headers.get("connection") == "close":
            self.close()
        return int(status_line.split()[1]), data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def multipart(fields: dict[str, str], file_name: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with ``fields`` and one file part named "file"; returns (body, content type)."""
    boundary = "mcmfh-load-" + hashlib.sha256(data).hexdigest()[:16]
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]  # fmt: skip
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")  # fmt: skip
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def run_clients(
    config: Config, base: str, images: list[tuple[str, bytes]], server_pid: int | None = None
) -> dict:
    import httpx

    rng = np.random.default_rng(config.seed)
    texts = [" ".join(rng.choice(QUERY_WORDS, size=int(rng.integers(3, 12)))) for _ in range(256)]
    # Bodies built once: encoding them is client work that would be charged to the shared cores on every request.
    text_bodies = [json.dumps({"query": t, "k": config.k}).encode() for t in texts]
    image_bodies = [multipart({"k": str(config.k)}, name, data) for name, data in images]
    records: list[tuple[str, float, str | None]] = []  # (kind, latency s, error or None)
    answered = [0]  # every request, warm-up included: the CPU counters below span the warm-up too
    host, port = base.removeprefix("http://").rsplit(":", 1)
    limits = httpx.Limits(max_connections=config.clients, max_keepalive_connections=config.clients)

    async def send(conn: Connection | httpx.AsyncClient, path: str, body: bytes, ctype: str) -> tuple[int, bytes]:
        if isinstance(conn, Connection):
            return await asyncio.wait_for(conn.request("POST", path, body, ctype), config.request_timeout_s)
        r = await conn.post(path, content=body, headers={"content-type": ctype})
        return r.status_code, r.content

    async def one(conn: Connection | httpx.AsyncClient, i: int, counted: bool) -> None:
        is_image = rng.random() < config.image_fraction
        start = time.perf_counter()
        error = None
        try:
            if is_image:
                status, data = await send(conn, "/search/image", *image_bodies[i % len(image_bodies)])
            else:
                status, data = await send(conn, "/search/text", text_bodies[i % len(texts)], "application/json")
            if status != 200:
                error = f"HTTP {status}"
            elif len(json.loads(data)["results"]) != min(config.k, info_items):
                error = "wrong result count"
        except (httpx.HTTPError, OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            error = type(e).__name__
        answered[0] += 1
        if counted:
            records.append(("image" if is_image else "text", time.perf_counter() - start, error))

    async def worker(shared: httpx.AsyncClient | None, wid: int, start_at: float, stop_at: float) -> None:
        conn = shared or Connection(host, int(port))
        i = wid
        try:
            while (now := time.perf_counter()) < stop_at:
                await one(conn, i, counted=now >= start_at)
                i += config.clients
        finally:
            if isinstance(conn, Connection):
                conn.close()

    async with httpx.AsyncClient(base_url=base, timeout=config.request_timeout_s, limits=limits) as client:
        health = (await client.get("/health")).json()
        info_items = health["items"]
        shared = client if config.client == "httpx" else None
        cpu_before = process_cpu_s(server_pid), time.process_time()
        begin = time.perf_counter()
        start_at, stop_at = begin + config.warmup_s, begin + config.warmup_s + config.duration_s
        await asyncio.gather(*(worker(shared, w, start_at, stop_at) for w in range(config.clients)))
        measured_s = time.perf_counter() - start_at
        cpu_after = process_cpu_s(server_pid), time.process_time()
    n = max(answered[0], 1)
    cpu = {
        "server_ms_per_request": None if cpu_before[0] is None or cpu_after[0] is None
        else (cpu_after[0] - cpu_before[0]) / n * 1000,
        "client_ms_per_request": (cpu_after[1] - cpu_before[1]) / n * 1000,
        "requests": answered[0],
    }  # fmt: skip
    return {"health": health, "records": records, "measured_s": measured_s, "cpu": cpu}


def summarise(records: list[tuple[str, float, str | None]], seconds: float) -> dict:
    out = {}
    for kind in ("text", "image", "all"):
        rows = [r for r in records if kind == "all" or r[0] == kind]
        lat = np.array([r[1] for r in rows]) * 1000
        errors: dict[str, int] = {}
        for r in rows:
            if r[2]:
                errors[r[2]] = errors.get(r[2], 0) + 1
        out[kind] = {
            "requests": len(rows),
            "errors": sum(errors.values()),
            "error_kinds": errors,
            "qps": len(rows) / seconds if seconds > 0 else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        }
    return out


def table(summary: dict) -> str:
    lines = [f"{'kind':<6} {'requests':>9} {'errors':>7} {'q/s':>9} {'p50 ms':>9} {'p99 ms':>9}"]
    for kind, s in summary.items():
        p50 = f"{s['p50_ms']:.1f}" if s["p50_ms"] is not None else "-"
        p99 = f"{s['p99_ms']:.1f}" if s["p99_ms"] is not None else "-"
        lines.append(f"{kind:<6} {s['requests']:>9} {s['errors']:>7} {s['qps']:>9.1f} {p50:>9} {p99:>9}")
    return "\n".join(lines)


ACCESS_LINE = re.compile(r"POST (/search/\w+) (\d{3}) ([\d.]+)ms")


def server_side(log_path: Path) -> dict:
    """Time inside the app (from the service's own access log): the rest of a client's latency is HTTP, the event
    loop and the client itself, which on a small machine share the same cores."""
    ms = np.array([float(m.group(3)) for m in map(ACCESS_LINE.search, log_path.read_text().splitlines()) if m])
    if not len(ms):
        return {"requests": 0}
    return {"requests": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(base: str, process: mp.Process, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.is_alive():
            raise SystemExit(f"server process exited with code {process.exitcode} (see its log)")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server did not answer /health within {timeout_s} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", help="index folder served by the real engine (default: synthetic engine)")
    ap.add_argument("--images", help="folder of query images (default: generated PNGs)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    ap.add_argument("--quick", action="store_true", help="10 s instead of --duration")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    ap.add_argument("--image-fraction", type=float, default=0.5, help="share of image queries")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--items", type=int, default=20_000, help="synthetic engine: database size")
    ap.add_argument("--bits", type=int, default=64, help="synthetic engine: code length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    ap.add_argument("--access-log", default="route", choices=["off", "route", "full"])
    ap.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the server")
    ap.add_argument("--out", default="benchmarks/results/load.json")
    ap.add_argument(
        "--client",
        default="raw",
        choices=["raw", "httpx"],
        help="load generator: a minimal keep-alive HTTP/1.1 client (default) or httpx (heavier)",
    )
    ap.add_argument("--search-threads", type=int, help="service search threads (default: the service default)")
    ap.add_argument("--compare-old", action="store_true",
                    help="first serve the old way (one query at a time under the engine lock, 2 search threads), "
                    "then the new way (micro-batched), back to back; prints both and the ratio")  # fmt: skip
    args = ap.parse_args(argv)
    config = Config(
        clients=args.clients, duration_s=10.0 if args.quick else args.duration, warmup_s=args.warmup,
        image_fraction=args.image_fraction, k=args.k, request_timeout_s=args.timeout, items=args.items,
        bits=args.bits, seed=args.seed, index=args.index, images=args.images, access_log=args.access_log,
        search_threads=args.search_threads, client=args.client,
    )  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.compare_old:
        result = run_once(config, out, args)
        return 0 if result["summary"]["all"]["errors"] == 0 and result["server_alive_after"] else 1
    old_cfg = replace(config, batch_queries=False, search_threads=OLD_SEARCH_THREADS)
    old = run_once(old_cfg, out.with_name(out.stem + ".old.json"), args)
    new = run_once(config, out.with_name(out.stem + ".new.json"), args)
    ratio = new["summary"]["all"]["qps"] / max(old["summary"]["all"]["qps"], 1e-9)
    both = {"old": old, "new": new, "qps_ratio_new_over_old": ratio}
    out.write_text(json.dumps(both, indent=2) + "\n")
    print(f"compare  old (one at a time, {OLD_SEARCH_THREADS} threads) {old['summary']['all']['qps']:.1f} q/s, "
          f"p99 {old['summary']['all']['p99_ms']:.0f} ms -> new (micro-batched) {new['summary']['all']['qps']:.1f} "
          f"q/s, p99 {new['summary']['all']['p99_ms']:.0f} ms: {ratio:.2f}x; JSON {out}")  # fmt: skip
    ok = all(r["summary"]["all"]["errors"] == 0 and r["server_alive_after"] for r in (old, new))
    return 0 if ok else 1


OLD_SEARCH_THREADS = min(4, os.cpu_count() or 1)  # the service default before micro-batching


def run_once(config: Config, out: Path, args: argparse.Namespace) -> dict:
    log_path = out.with_suffix(".server.log")
    log_path.write_text("")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = mp.get_context("spawn").Process(target=serve, args=(config, port, str(log_path)), daemon=True)
    load_before = os.getloadavg()[0]
    server.start()
    try:
        wait_until_up(base, server, args.startup_timeout)
        images = query_images(config.images, config.seed)
        run = asyncio.run(
            asyncio.wait_for(
                run_clients(config, base, images, server.pid), config.warmup_s + config.duration_s + 2 * args.timeout
            )
        )
        alive_after = server.is_alive()
    finally:
        server.terminate()
        server.join(timeout=10)
        if server.is_alive():
            server.kill()
    health = run["health"]
    engine = (
        f"index {config.index} ({health['model']}, {health['bits']} bits, {health['encoder']}, {health['items']} items)"
        if config.index
        else f"SYNTHETIC ({health['items']} random {health['bits']}-bit codes, SimHash queries; no trained model)"
    )
    summary = summarise(run["records"], run["measured_s"])
    in_app = server_side(log_path) if config.access_log != "off" else {"requests": 0}
    result = {
        "engine": engine, "config": asdict(config), "measured_s": run["measured_s"], "server_alive_after": alive_after,
        "summary": summary, "machine": {"python": platform.python_version(), "cpus": mp.cpu_count(),
                                        "platform": platform.platform()},
        "server_log": str(log_path), "server_in_app": in_app, "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0], "cpu": run["cpu"],
    }  # fmt: skip
    out.write_text(json.dumps(result, indent=2) + "\n")
    mode = "micro-batched" if config.batch_queries else "one query at a time"
    print(f"engine   {engine}; {mode}, {config.search_threads or 'default'} search threads")
    load = f"{config.clients} clients, {run['measured_s']:.1f} s measured after {config.warmup_s:.0f} s warm-up"
    print(f"load     {load}, {config.image_fraction:.0%} image queries, k={config.k}, server on 127.0.0.1:{port}")
    print(table(summary))
    if in_app["requests"]:
        print(f"in-app   p50 {in_app['p50_ms']:.1f} ms, p99 {in_app['p99_ms']:.1f} ms over {in_app['requests']} "
              "searches (server's own log, incl. warm-up; excludes HTTP parsing and client time)")  # fmt: skip
    cpu = run["cpu"]
    if cpu["server_ms_per_request"] is not None:
        print(f"cpu      server {cpu['server_ms_per_request']:.1f} ms, client {cpu['client_ms_per_request']:.1f} ms "
              f"of CPU per request (all threads, {cpu['requests']} requests incl. warm-up)")  # fmt: skip
    print(f"machine  {mp.cpu_count()} CPUs, load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after "
          "the run (other work skews numbers)")  # fmt: skip
    print(f"server   {'still up' if alive_after else 'DIED'}; log {log_path}; JSON {out}")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
