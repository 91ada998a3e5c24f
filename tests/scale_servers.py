"""Real servers for the scale-out tests, started once per session: embedded Milvus, a private PostgreSQL cluster,
a local Ray instance. Each fixture skips (with the reason) when its package or server binary is not installed, so
the core venv stays green; ``.ci/run`` runs these tests in the scale venv."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _unavailable(reason: str) -> None:
    """Skip, unless MCMFH_REQUIRE_SCALE=1 (``make test-scale``, CI): there a server that cannot start is a failure."""
    if os.environ.get("MCMFH_REQUIRE_SCALE") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("pymilvus", reason="pymilvus not installed (pip install 'mcmfh[scale]')")
    milvus = pytest.importorskip("milvus", reason="embedded Milvus (PyPI milvus==2.3.5) not installed")
    server = milvus.default_server
    server.set_base_dir(str(tmp_path_factory.mktemp("milvus")))
    server.listen_port = free_port()  # never collide with a Milvus already on 19530
    try:
        server.start()
    except Exception as e:  # an environment problem: a skip here, a failure where the scale group is required
        _unavailable(f"embedded Milvus did not start: {e}")
    yield f"http://127.0.0.1:{server.listen_port}"
    server.stop()


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway cluster on a free port with trust auth; yields the DSN of its ``postgres`` database."""
    pytest.importorskip("psycopg", reason="psycopg 3 not installed (pip install 'mcmfh[scale]')")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="mcmfh-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the cluster as the postgres user
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' user to own the test cluster")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    port, data = free_port(), root / "data"

    def run(*cmd: str) -> None:
        subprocess.run([*run_as, *cmd], check=True, capture_output=True, text=True, timeout=120)

    try:
        run(initdb, "-D", str(data), "-U", "mcmfh", "--auth=trust", "-E", "UTF8", "--no-sync")
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start")
    except subprocess.CalledProcessError as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"test PostgreSQL cluster did not start: {e.stderr or e.stdout}")
    yield f"host=127.0.0.1 port={port} user=mcmfh dbname=postgres"
    run(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_dsn(postgres_server: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database per test, dropped afterwards."""
    import psycopg

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    with psycopg.connect(postgres_server, autocommit=True) as db:
        db.execute(f"DROP DATABASE IF EXISTS {name}")
        db.execute(f"CREATE DATABASE {name}")
    yield postgres_server.replace("dbname=postgres", f"dbname={name}")
    with psycopg.connect(postgres_server, autocommit=True) as db:
        db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def ray_local() -> Iterator[object]:
    """A local Ray instance with 2 CPUs (2 encode workers)."""
    ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'mcmfh[scale]')")
    pytest.importorskip("ray.data", reason="Ray Data not installed (pip install 'ray[data]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
