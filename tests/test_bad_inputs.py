"""The bad-input catalogue: every mistake a user can make gets one clear ``error:`` line, exit code 2, no traceback.

CLI cases run ``python -m mcmfh`` in a subprocess (the real entry point, with its real exception types); faults that
cannot be produced for real here (a full disk, a read-only file system as root) are injected into that subprocess by
a one-line patch before ``main`` runs. The HTTP cases are in ``tests/test_http_errors.py``. Add new CLI cases here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


# As root, file modes are ignored (capabilities DAC_OVERRIDE and DAC_READ_SEARCH): dropped from the child's
# bounding set, root is held to the modes like any user, so a chmod 000 file is really unreadable to it.
AS_FILE_MODES = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                 "--bounding-set=-dac_override,-dac_read_search", "--"]  # fmt: skip


def run_cli(*args: str, patch: str = "", cwd: Path | None = None,
            file_modes: bool = False) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``python -m mcmfh ARGS`` (or, with ``patch``, the same ``main`` after running that Python snippet);
    ``file_modes``: held to file permissions even when run as root (``AS_FILE_MODES``)."""
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("MCMFH_DEBUG", None)
    if patch:
        code = f"import sys\nfrom mcmfh.cli import main\n{patch}\nsys.exit(main(sys.argv[1:]))"
        cmd = [sys.executable, "-c", code, *args]
    else:
        cmd = [sys.executable, "-m", "mcmfh", *args]
    if file_modes and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv (util-linux): file modes cannot be enforced")
        cmd = AS_FILE_MODES + cmd
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def one_error_line(r: subprocess.CompletedProcess[str], *named: str, code: int = 2) -> str:
    """Assert the run failed with ``code`` and exactly one ``error:`` line naming each of ``named``; return it."""
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for part in named:
        assert part in lines[0], (part, lines[0])
    return lines[0]


# --- usage -------------------------------------------------------------------------------------------------------


def test_bare_command_prints_help() -> None:
    r = run_cli()
    assert r.returncode == 0 and "Traceback" not in r.stdout + r.stderr
    assert "Usage:" in r.stdout and "encode" in r.stdout


def test_bare_group_prints_its_help() -> None:
    r = run_cli("index")
    assert r.returncode == 0 and "Traceback" not in r.stdout + r.stderr
    assert "build" in r.stdout and "add" in r.stdout


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("frobnicate",), ("No such command", "frobnicate")),
        (("search", "--frob"), ("No such option", "--frob")),
        (("search",), ("Missing argument", "archive_dir")),
        (("index", "add", "A", "--dataset", "csv"), ("Missing option", "--data-root")),
        (("search", "A", "--text", "x", "--k", "0"), ("--k", "from 1 to 10000")),
        (("search", "A", "--text", "x", "--k", "-5"), ("--k", "from 1 to 10000")),
        (("search", "A", "--text", "x", "--k", "1000000000"), ("--k", "from 1 to 10000")),
        (("search", "A", "--text", "x", "--k", "ten"), ("--k", "valid integer", "from 1 to 10000")),
        (
            ("encode", "--dataset", "csv", "--data-root", ".", "--encoder", "tiny", "--out", "F", "--batch-size", "0"),
            ("--batch-size", "from 1 to"),
        ),
        (
            ("train", "--features", "F", "--method", "mcmfh", "--out", "R", "--seed", "-1"),
            ("--seed", "from 0 to 4294967295"),
        ),
    ],
)
def test_usage_errors_are_one_line(args: tuple[str, ...], named: tuple[str, ...]) -> None:
    one_error_line(run_cli(*args), *named)


def test_debug_shows_the_traceback() -> None:
    r = run_cli("--debug", "search", "A", "--text", "x", "--k", "0")
    assert r.returncode != 0 and "Traceback" in r.stderr


# --- operating-system and file faults -----------------------------------------------------------------------------

_RAISE_IN_ENCODE = """
import errno, mcmfh.cli.encode as enc
def boom(*a, **k):
    raise OSError({errno}, __import__('os').strerror({errno}), 'F/chunk-00000.safetensors')
enc._load_dataset = boom
"""


def _encode_args() -> tuple[str, ...]:
    return ("encode", "--dataset", "csv", "--data-root", ".", "--encoder", "tiny", "--out", "F", "--no-progress")


def test_disk_full_says_what_is_safe_and_to_rerun() -> None:
    line = one_error_line(
        run_cli(*_encode_args(), patch=_RAISE_IN_ENCODE.format(errno="errno.ENOSPC")),
        "disk full",
        "F/chunk-00000.safetensors",
    )
    assert "committed before is safe" in line and "re-run to resume" in line


@pytest.mark.parametrize("code", ["errno.EACCES", "errno.EROFS"])
def test_unwritable_output_is_named_as_not_writable(code: str) -> None:
    one_error_line(
        run_cli(*_encode_args(), patch=_RAISE_IN_ENCODE.format(errno=code)), "F/chunk-00000.safetensors", "not writable"
    )


def test_a_genuine_bug_asks_for_a_report_with_debug() -> None:
    patch = "import mcmfh.cli.encode as enc\nenc._load_dataset = lambda *a, **k: 1 / 0"
    line = one_error_line(run_cli(*_encode_args(), patch=patch), "bug", "--debug", code=1)
    assert "ZeroDivisionError" in line


# --- CSV ingest ---------------------------------------------------------------------------------------------------

ROWS = ["image,text,labels,split"] + [f",caption {i} über,a;b,{('train', 'dev', 'test')[i % 3]}" for i in range(9)]


def _encode_csv(csv_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("encode", "--dataset", "csv", "--data-root", str(csv_path), "--encoder", "tiny",
                   "--out", str(csv_path.with_suffix("")), "--no-progress", *extra)  # fmt: skip


def test_latin1_csv_names_file_line_and_encoding_and_encoding_option_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_text("\n".join(ROWS) + "\n", encoding="latin-1")
    one_error_line(_encode_csv(path), f"{path}:2", "utf-8", "--encoding latin-1")
    r = _encode_csv(path, "--encoding", "latin-1")
    assert r.returncode == 0 and "9 items" in r.stdout, r.stderr
    one_error_line(_encode_csv(path, "--encoding", "klingon"), "klingon", "unknown text encoding")


def test_huge_caption_is_one_bad_row_and_skip_bad_lists_every_row_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    bad = [",{},a,train".format("x" * 10_000_000)] + [",,a,train"] * 14  # one 10 MB caption + 14 empty texts
    path.write_text("\n".join(ROWS + bad) + "\n", encoding="utf-8")
    one_error_line(_encode_csv(path), "15 bad item(s)", f"{path}:11", "'text'", "limit is 1000000", "--skip-bad")
    r = _encode_csv(path, "--skip-bad")
    assert r.returncode == 0 and "Traceback" not in r.stderr and "9 items" in r.stdout, r.stderr
    report = tmp_path / "big.skipped.tsv"
    assert f"full list: {report}" in r.stdout
    lines = report.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "where\twhy" and len(lines) == 16
    assert lines[1].startswith(f"{path}:11\tfield 'text' has 10000000 characters")
    assert lines[-1] == f"{path}:25\tempty text"


# --- corrupt weights -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small fitted run and the feature cache it was trained on."""
    from conftest import make_features
    from mcmfh.training.runs import train_run

    root = tmp_path_factory.mktemp("weights")
    make_features(n=60).save(root / "feats")
    return train_run(root / "feats", "cca-itq", 16, 0, root / "run"), root / "feats"


def _corrupt(run: Path, tmp_path: Path, how: str) -> Path:
    import shutil

    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    weights = bad / "weights.safetensors"
    data = weights.read_bytes()
    if how == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif how == "random":
        weights.write_bytes(os.urandom(len(data)))
    else:  # a valid safetensors file, but not the one the manifest recorded
        weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    return bad


@pytest.mark.parametrize("how", ["truncated", "random", "swapped"])
def test_corrupt_weights_are_named_as_such(trained_run: tuple[Path, Path], tmp_path: Path, how: str) -> None:
    run, feats = trained_run
    bad = _corrupt(run, tmp_path, how)
    r = run_cli("evaluate", str(bad), "--features", str(feats), "--out", str(tmp_path / "m.json"))
    line = one_error_line(r, "weights.safetensors", "checksum mismatch")
    assert "corrupt" in line
    assert not (tmp_path / "m.json").exists()


def test_corrupt_weights_without_a_recorded_checksum_still_get_one_line(
    trained_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """Runs written before checksums were recorded: the safetensors parser's own failure, named, in one line."""
    import json

    run, feats = trained_run
    bad = _corrupt(run, tmp_path, "random")
    manifest = json.loads((bad / "manifest.json").read_text())
    del manifest["weights_sha256"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    r = run_cli("evaluate", str(bad), "--features", str(feats), "--out", str(tmp_path / "m.json"))
    one_error_line(r, "weights.safetensors", "not a valid safetensors file")


# --- read-only archive ---------------------------------------------------------------------------------------------


_READ_ONLY_FS = """
import errno, os
import mcmfh.locking as locking
real_open = os.open
def ro_open(path, flags, *a, **k):
    if str(path).endswith(locking.LOCK_NAME):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    return real_open(path, flags, *a, **k)
locking.os.open = ro_open
"""


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 16-bit archive of synthetic train items, and the dataset folder whose test split is not in it yet."""
    from mcmfh.archive import Archive
    from mcmfh.data import load_dataset
    from mcmfh.data.synthetic import make_synthetic_dataset
    from mcmfh.encode_features import encode_dataset
    from mcmfh.encoders import get_encoder
    from mcmfh.training.runs import train_run

    root = tmp_path_factory.mktemp("small-archive")
    data = make_synthetic_dataset(root / "syn", n=40, seed=0)
    fs = encode_dataset(load_dataset("csv", data), get_encoder("tiny"), root / "feats")
    run = train_run(root / "feats", "cca-itq", 16, 0, root / "run")
    Archive.build(run, fs, root / "arc", splits=("train",)).close()
    return {"arc": root / "arc", "data": data}


def _copy(archive: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(archive, tmp_path / "arc")
    return tmp_path / "arc"


def test_read_only_archive_is_named_not_writable_and_stays_searchable(small_archive, tmp_path: Path) -> None:
    """On a read-only file system (injected: root ignores file modes) a write says so; reading still works."""
    from mcmfh.archive import Archive

    arc = _copy(small_archive["arc"], tmp_path)
    with Archive.open(arc) as archive:
        some_id = next(iter(archive.indexes["texts"])).id
    r = run_cli("index", "remove", str(arc), some_id, patch=_READ_ONLY_FS)
    line = one_error_line(r, "arc", "not writable")
    assert "unreadable" not in line
    with Archive.open(arc) as archive:
        assert archive.get(some_id) is not None


_FULL_DISK_ON_CODES = """
import errno, os
import mcmfh.index._files as files
real = files.atomic_write_bytes
def full(path, data):
    if os.path.basename(str(path)).startswith("codes-"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    real(path, data)
files.atomic_write_bytes = full
"""


@pytest.mark.slow  # a disk filling up mid-add, then a rerun: two CLI runs, 10-26 s on 2 busy cores
def test_disk_full_during_index_add_loses_nothing_and_a_rerun_completes(small_archive, tmp_path: Path) -> None:
    from mcmfh.archive import Archive

    arc = _copy(small_archive["arc"], tmp_path)
    n0 = len(Archive.open(arc))
    args = ("index", "add", str(arc), "--dataset", "csv", "--data-root", str(small_archive["data"]), "--splits", "test")
    line = one_error_line(run_cli(*args, patch=_FULL_DISK_ON_CODES), "disk full", "codes-")
    assert "committed before is safe" in line and "re-run to resume" in line
    with Archive.open(arc) as archive:
        assert len(archive) == n0  # nothing half-added
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    with Archive.open(arc) as archive:
        assert len(archive) > n0


def test_unreadable_inputs_are_named_not_readable_and_nothing_is_added(small_archive, tmp_path: Path) -> None:
    """A real chmod 000 (root held to file modes): the image or the CSV is *not readable*, never "not writable"."""
    from mcmfh.archive import Archive

    arc = _copy(small_archive["arc"], tmp_path)
    n0 = len(Archive.open(arc))
    image = tmp_path / "locked.png"
    shutil.copy(next(small_archive["data"].parent.rglob("*.png")), image)
    data = tmp_path / "new.csv"
    data.write_text(f"image,text,labels,split\n{image},a locked image,a,test\n")
    image.chmod(0)
    try:
        r = run_cli("index", "add", str(arc), "--dataset", "csv", "--data-root", str(data), file_modes=True)
        line = one_error_line(r, str(image), "image file is not readable (Permission denied)")
        assert "writable" not in line
        image.chmod(0o644)
        data.chmod(0)
        r = run_cli("index", "add", str(arc), "--dataset", "csv", "--data-root", str(data), file_modes=True)
        assert "writable" not in one_error_line(r, str(data), "is not readable")
        # any other read: the OS error itself (a real one: the command is made to read the locked file) is a read
        patch = f"import mcmfh.cli.encode as enc\nenc._load_dataset = lambda *a, **k: open({str(data)!r}).read()"
        r = run_cli(*_encode_args(), patch=patch, file_modes=True)
        assert "writable" not in one_error_line(r, str(data), "is not readable (Permission denied)")
    finally:
        image.chmod(0o644)
        data.chmod(0o644)
    with Archive.open(arc) as archive:
        assert len(archive) == n0


# --- dead ends on the way to a first search (issue 26): each error names the next command -------------------------


def test_search_of_a_missing_archive_says_how_to_build_one(tmp_path: Path) -> None:
    line = one_error_line(run_cli("search", str(tmp_path / "nope"), "--text", "x"), "nope", "does not exist")
    assert "index build" in line and "interrupted" not in line


def test_search_of_a_run_folder_says_to_build_an_index(trained_run: tuple[Path, Path]) -> None:
    run, _ = trained_run
    line = one_error_line(run_cli("search", str(run), "--text", "x"), str(run), "trained run")
    assert f"index build {run} --features" in line


def test_search_of_the_demo_folder_points_at_its_archive(tmp_path: Path) -> None:
    from mcmfh.demo import KIND
    from mcmfh.io import atomic_write_json
    from mcmfh.manifest import new_manifest

    atomic_write_json(tmp_path / "demo" / "manifest.json", new_manifest(KIND))  # what `mcmfh demo` writes first
    one_error_line(run_cli("search", str(tmp_path / "demo"), "--text", "x"), f"search {tmp_path / 'demo'}/archive")


def test_index_commands_on_a_missing_archive_say_how_to_build_one(tmp_path: Path) -> None:
    for args in (("info",), ("compact",), ("remove", "a1"), ("add", "--dataset", "csv", "--data-root", ".")):
        r = run_cli("index", args[0], str(tmp_path / "nope"), *args[1:])
        one_error_line(r, "nope", "does not exist", "index build")


@pytest.mark.parametrize(
    ("words", "hint"),
    [(("hemorrhage",), "--text hemorrhage"), (("brain", "bleed"), "--text 'brain bleed'"),
     (("scan.dcm",), "--image scan.dcm")],
)  # fmt: skip
def test_search_with_a_bare_query_says_which_option_was_meant(small_archive, words, hint) -> None:
    line = one_error_line(run_cli("search", str(small_archive["arc"]), *words), "search", hint)
    assert str(small_archive["arc"]) in line


def test_search_with_text_and_extra_words_says_to_quote(small_archive) -> None:
    r = run_cli("search", str(small_archive["arc"]), "--text", "brain", "bleed")
    one_error_line(r, "'bleed'", "quote")


def test_serve_on_a_busy_port_is_one_line_naming_another_port(small_archive) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_cli("serve", str(small_archive["arc"]), "--port", str(port))
    one_error_line(r, f"port {port}", "already in use", f"--port {port + 1}")
    assert "serving" not in r.stdout  # refused before the index was loaded or anything was announced


def test_demo_hint_names_a_command_that_runs_from_this_shell(tmp_path: Path, monkeypatch) -> None:
    """``make demo`` runs ``.venv/bin/mcmfh``: with the venv not activated, ``mcmfh`` alone is not on PATH, so the
    hint is the script's path relative to the working folder; once it is on PATH, plain ``mcmfh``."""
    from mcmfh.cli.next_steps import mcmfh_command

    script = tmp_path / ".venv" / "bin" / "mcmfh"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), "demo"])
    monkeypatch.setenv("PATH", "/nonexistent")
    assert mcmfh_command() == ".venv/bin/mcmfh"
    monkeypatch.setenv("PATH", str(script.parent))
    assert mcmfh_command() == "mcmfh"
    monkeypatch.setattr(sys, "argv", ["/somewhere/mcmfh/__main__.py"])
    assert mcmfh_command().endswith(" -m mcmfh")
