"""What a job image's root filesystem holds, as (host path, image path) pairs.

A copy of the interpreter running this command (its binary, the standard library
without tests and tooling, the shared libraries found by ``ldd`` at the same absolute
paths as on this host), a minimal ``/etc``, and host directories copied as a
:class:`Tree`: the user's code and the installed requirements.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from typing import Iterable

from .bytecode import CHECKED, UNCHECKED
from .errors import ImageBuildError

CODE_DIR = "/app/code"
DEPS_DIR = "/app/deps"
PREFIX = "/usr/local"
#: Parts of the standard library a job never needs.
STDLIB_SKIP = {
    "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages",
    "pydoc_data", "__phello__", "distutils",
}
SKIP_NAMES = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", "node_modules"}
_LDD_PATH = re.compile(r"(/\S+)")


@dataclass(frozen=True)
class Tree:
    """A host directory copied to ``target`` in the image, less ``skip_top`` names at its top."""

    source: str
    target: str
    skip_top: frozenset = frozenset()
    skip_prefix: str | None = None
    #: ``compileall --invalidation-mode`` for its modules.
    invalidation: str = CHECKED
    #: Whether its pycs are kept across builds (the stdlib's: the same every build).
    shared_cache: bool = False

    def files(self) -> Iterable[tuple[str, str]]:
        """(host path, image path) of the directory itself and everything copied under it."""
        return _walk(self.source, self.target, self.skip_top, self.skip_prefix)


def stdlib_tree() -> Tree:
    """The standard library of this interpreter, less :data:`STDLIB_SKIP`; its pycs unchecked."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return Tree(sysconfig.get_path("stdlib"), f"{PREFIX}/lib/{version}", frozenset(STDLIB_SKIP), "config-",
                UNCHECKED, shared_cache=True)


def runtime_files(trees: Iterable[Tree] = ()) -> Iterable[tuple[str, str]]:
    """(host path, image path) for the interpreter, its libraries and the stdlib.

    The libraries include those that compiled modules in ``trees`` (the code, the
    requirements) link against, except ones those trees carry themselves.
    """
    executable = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    yield executable, f"{PREFIX}/bin/{version}"
    yield from stdlib_tree().files()
    libraries = set(_shared_libraries(executable))
    dynload = os.path.join(sysconfig.get_path("stdlib"), "lib-dynload")
    modules = [os.path.join(dynload, name) for name in os.listdir(dynload) if name.endswith(".so")]
    trees = list(trees)
    for tree in trees:
        modules += [source for source, _ in tree.files() if _is_shared_object(os.path.basename(source))]
    for module in modules:
        libraries.update(_shared_libraries(module))
    roots = tuple(os.path.join(os.path.realpath(tree.source), "") for tree in trees)
    for library in sorted(libraries):
        if os.path.realpath(library).startswith(roots):
            continue  # bundled with its wheel (e.g. numpy.libs), found there through its RPATH
        # Same absolute paths as on this host (every hop of a symlink chain), so
        # RUNPATHs and the dynamic loader find them.
        for hop in _link_chain(library):
            yield hop, hop


def system_files() -> dict[str, bytes]:
    """Image path → content of the few files the image gets that no host file gives."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return {
        "/etc/passwd": b"root:x:0:0:root:/root:/sbin/nologin\njob:x:10001:10001:job:/tmp:/sbin/nologin\n",
        "/etc/group": b"root:x:0:\njob:x:10001:\n",
        f"{PREFIX}/lib/{version}/site-packages/README.txt": b"jobyard job image: user code is in /app/code\n",
    }


def _is_shared_object(name: str) -> bool:
    return name.endswith(".so") or ".so." in name


def _link_chain(path: str) -> list[str]:
    chain = [path]
    while os.path.islink(chain[-1]) and len(chain) < 16:
        chain.append(os.path.normpath(os.path.join(os.path.dirname(chain[-1]), os.readlink(chain[-1]))))
    real = os.path.realpath(path)
    return chain if real in chain else chain + [real]


def _shared_libraries(path: str) -> list[str]:
    try:
        output = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageBuildError(f"cannot list the shared libraries of {path}: {exc}") from exc
    found = []
    for line in output.splitlines():
        if "=>" in line:
            line = line.split("=>", 1)[1]
        match = _LDD_PATH.search(line)
        if match and os.path.exists(match.group(1)):
            found.append(match.group(1))
    return found


def _walk(root: str, target: str, skip_top: set[str] = frozenset(), skip_prefix: str | None = None):
    yield root, target
    for directory, dirs, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        at_top = relative == "."
        dirs[:] = sorted(
            d for d in dirs
            if d not in SKIP_NAMES
            and not (at_top and (d in skip_top or (skip_prefix and d.startswith(skip_prefix))))
        )
        base = target if at_top else f"{target}/{relative}"
        for d in dirs:
            yield os.path.join(directory, d), f"{base}/{d}"
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo", ".exe")):
                continue
            yield os.path.join(directory, name), f"{base}/{name}"
