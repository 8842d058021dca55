"""Hash-based bytecode for a job image, compiled by this interpreter's ``compileall``.

Hash-based pycs stay valid on the read-only root whatever the files' mtimes. The
stdlib's pycs are kept in a per-user cache (``~/.cache/jobyard/pyc``) and reused while
their source hash matches.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Callable

from .errors import ImageBuildError

if TYPE_CHECKING:
    from .rootfs import Tree

#: The code and requirements are checked: an image built ``FROM`` ours that copies a
#: changed module over runs the new source, not stale bytecode. The stdlib, which nobody
#: overwrites and which every start imports, is unchecked: hashing it costs ~5 ms a start.
CHECKED = "checked-hash"
UNCHECKED = "unchecked-hash"
COMPILE_TIMEOUT = 300.0


def compile_bytecode(trees: list[Tree], work: str,
                     progress: Callable[[str], None] = lambda line: None) -> list[tuple[str, str]]:
    """Compile every module of ``trees`` with this interpreter's ``compileall``, hash-based.

    Returns (host pyc, image pyc) pairs. The pycs record image paths (for tracebacks)
    and a hash of the source, not its mtime, so a pyc whose hash still matches is
    reused (the stdlib's, from a per-user cache). A module that does not compile (a
    file for another Python, say) gets no pyc; Python compiles it if it is imported.
    """
    wanted, processes = [], []
    workers = max(1, min(4, os.cpu_count() or 1))
    for tree in trees:
        cache = _pyc_cache(tree, work)
        modules = [(_cached_pyc(cache, source), target, source) for source, target in tree.files()
                   if source.endswith(".py") and os.path.isfile(source)]
        wanted += [(pyc, target, source, tree.invalidation) for pyc, target, source in modules]
        stale = [source for pyc, _, source in modules if not _fresh(pyc, source, tree.invalidation)]
        for chunk in range(workers):
            if stale[chunk::workers]:
                processes.append(_start_compile(tree, stale[chunk::workers], cache))
    _finish_compile(processes)
    found = [(pyc, _image_pyc(target)) for pyc, target, source, mode in wanted if _fresh(pyc, source, mode)]
    skipped = len(wanted) - len(found)
    progress(f"compiled {sum(len(names) for _, names in processes)} modules, {len(found)} with bytecode"
             + (f" ({skipped} did not compile and stay source only)" if skipped else ""))
    return found


def _pyc_cache(tree: Tree, work: str) -> str:
    """Where ``tree``'s pycs go: a per-user cache for the stdlib, which every build shares."""
    if not tree.shared_cache:
        return work
    key = hashlib.sha256(repr((os.path.realpath(sys.executable), sys.version, importlib.util.MAGIC_NUMBER,
                               tree.source, tree.target, tree.invalidation)).encode()).hexdigest()[:16]
    root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jobyard", "pyc", key)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError:
        return work
    return root if os.access(root, os.W_OK) else work


def _fresh(pyc: str, source: str, invalidation: str) -> bool:
    """Whether ``pyc`` is this interpreter's hash-based pyc of ``source`` as it is now."""
    flags = 0b11 if invalidation == CHECKED else 0b01
    try:
        with open(pyc, "rb") as handle:
            header = handle.read(16)
        with open(source, "rb") as handle:
            data = handle.read()
    except OSError:
        return False
    return (header[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(header[4:8], "little") == flags
            and header[8:16] == importlib.util.source_hash(data))


def _start_compile(tree: Tree, names: list[str], cache_dir: str) -> tuple[subprocess.Popen, list[str]]:
    # -B: compileall's own imports must not drop mtime-based pycs into the prefix.
    command = [sys.executable, "-I", "-B", "-X", f"pycache_prefix={cache_dir}", "-m", "compileall", "-q", "-f",
               "--invalidation-mode", tree.invalidation, "-s", tree.source, "-p", tree.target, "-i", "-"]
    try:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, text=True)
    except OSError as exc:
        raise ImageBuildError(f"cannot run compileall ({sys.executable}): {exc.strerror}") from None
    return process, names


def _finish_compile(processes: list[tuple[subprocess.Popen, list[str]]]) -> None:
    """Hand each compileall its module names and wait for all of them, within one deadline."""
    deadline = time.monotonic() + COMPILE_TIMEOUT
    for process, names in processes:
        try:
            process.communicate("\n".join(names), timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other, _ in processes:
                other.kill()
                other.wait()
            raise ImageBuildError(f"compileall did not finish within {COMPILE_TIMEOUT:g}s") from None


def _cached_pyc(cache_dir: str, source: str) -> str:
    """Where ``-X pycache_prefix`` puts the pyc of ``source`` (importlib's layout)."""
    directory, name = os.path.split(os.path.abspath(source))
    return os.path.join(cache_dir, directory.lstrip(os.sep), f"{name[:-3]}.{sys.implementation.cache_tag}.pyc")


def _image_pyc(target: str) -> str:
    directory, name = os.path.split(target)
    return f"{directory}/__pycache__/{name[:-3]}.{sys.implementation.cache_tag}.pyc"
