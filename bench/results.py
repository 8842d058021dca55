"""Write a benchmark's figures into ``bench/RESULTS.md`` without clobbering the others.

Each benchmark owns one named section of the file, delimited by
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``. :func:`update_section` replaces
that block (or appends it) and stamps it with the command that produced it, the date,
the commit (and whether the working tree differed from it) and the machine, so every figure in the file says where it came from. Writers take
an exclusive lock and replace the file atomically, so benchmarks finishing at the
same time keep each other's sections.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import re
import shlex
import subprocess
import sys
import tempfile

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
RESULTS_PATH = os.path.join(BENCH_DIR, "RESULTS.md")
PREAMBLE = (
    "# Benchmark results\n\n"
    "Each section below is written by the benchmark it names (through `bench/results.py`)\n"
    "and starts with the exact command, the date, the commit measured and the machine.\n"
)


def update_section(name: str, markdown: str, command: str | None = None, path: str = RESULTS_PATH) -> str:
    """Replace (or append) section ``name`` of ``path`` with ``markdown``; return the block.

    ``command`` defaults to the command line of the running process.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"section name {name!r}: use letters, digits, '.', '_' or '-'")
    block = section_block(name, markdown, command or command_line())
    with _locked(os.path.dirname(os.path.abspath(path))):
        text = _read(path) or PREAMBLE
        _write_atomically(path, replace_block(text, name, block))
    return block


def section_block(name: str, markdown: str, command: str) -> str:
    """The delimited block for ``name``: header line, then ``markdown``."""
    header = f"_`{command}` · {now()} · {revision()} · {machine()}_"
    return f"<!-- bench:{name} -->\n{header}\n\n{markdown.strip()}\n<!-- /bench:{name} -->"


def replace_block(text: str, name: str, block: str) -> str:
    """``text`` with section ``name`` replaced by ``block``, or ``block`` appended."""
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _match: block, text, count=1)
    return f"{text.rstrip()}\n\n{block}\n"


def command_line() -> str:
    """The running command, with paths shown relative to the project root."""
    argv = [_relative(sys.executable), _relative(sys.argv[0]), *sys.argv[1:]]
    return shlex.join(argv)


def now() -> str:
    """The current UTC time, to the minute."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def revision() -> str:
    """The checked-out commit, and whether tracked files differ from it (the code measured)."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown"
    return f"commit {commit}" + (" + uncommitted changes" if dirty else "")


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()


def machine() -> str:
    """Cores, memory (psutil) and the Docker server version of this machine."""
    import psutil

    cores = psutil.cpu_count(logical=True)
    memory = psutil.virtual_memory().total / 1024**3
    return f"{cores} cores, {memory:.1f} GiB RAM, Docker {docker_version()}"


def docker_version() -> str:
    """The Docker Engine's server version, or ``unavailable``."""
    try:
        import docker

        client = docker.from_env(timeout=10)
        try:
            return client.version().get("Version", "unknown")
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - a missing engine must not lose the figures
        return "unavailable"


def _relative(path: str) -> str:
    absolute = os.path.abspath(path)
    if absolute.startswith(ROOT + os.sep):
        return os.path.relpath(absolute, ROOT)
    return path


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".results-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class _locked:
    """An exclusive flock on a directory, held for a read-modify-write of a file in it."""

    def __init__(self, directory: str):
        self.directory = directory
        self.fd = -1

    def __enter__(self) -> "_locked":
        self.fd = os.open(self.directory, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc_info) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
