"""``jobyard image build``: a self-contained Python job image from local files.

No registry is needed: the image is ``FROM scratch`` and holds a copy of the
interpreter running this command (binary, shared libraries found by ``ldd``, the
standard library without tests and tooling) plus, optionally, a directory of the
user's modules on ``PYTHONPATH`` at ``/app/code``. Jobs run in it as uid 10001.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import docker
import docker.errors

from .errors import ImageBuildError

log = logging.getLogger(__name__)

DEFAULT_TAG = "jobyard/python:latest"
CODE_DIR = "/app/code"
PREFIX = "/usr/local"
#: Parts of the standard library a job never needs.
STDLIB_SKIP = {
    "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages",
    "pydoc_data", "__phello__", "distutils",
}
SKIP_NAMES = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", "node_modules"}
_LDD_PATH = re.compile(r"(/\S+)")

DOCKERFILE = f"""FROM scratch
COPY rootfs/ /
ENV PATH={PREFIX}/bin:/usr/bin:/bin \\
    PYTHONPATH={CODE_DIR} \\
    LANG=C.UTF-8 \\
    PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title="jobyard python job image" \\
      jobyard.image=python
USER 10001:10001
WORKDIR /tmp
CMD ["python3"]
"""


@dataclass(frozen=True)
class BuiltImage:
    """What a build produced."""

    tag: str
    id: str
    size: int
    seconds: float


def build_image(client: docker.DockerClient, tag: str = DEFAULT_TAG, code: str | None = None,
                progress: Callable[[str], None] = lambda line: None) -> BuiltImage:
    """Assemble the build context from this machine's Python and build ``tag``."""
    if code is not None and not os.path.isdir(code):
        raise ImageBuildError(f"--code {code!r} is not a directory")
    started = time.monotonic()
    with tempfile.TemporaryFile() as context:
        progress("assembling the Python runtime from local files")
        _write_context(context, code)
        context.seek(0)
        progress(f"building {tag} ({_mib(context)} MiB context)")
        try:
            image, _ = client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True,
                                           forcerm=True, labels={"jobyard.image": "python"})
        except docker.errors.BuildError as exc:
            raise ImageBuildError(f"image build failed: {exc.msg}") from exc
        except docker.errors.APIError as exc:
            raise ImageBuildError(f"Docker Engine refused the build: {exc}") from exc
    built = BuiltImage(tag, image.id, int(image.attrs.get("Size", 0)), time.monotonic() - started)
    progress(f"built {tag} {image.short_id} in {built.seconds:.1f}s")
    return built


def _write_context(fileobj, code: str | None) -> None:
    with tarfile.open(fileobj=fileobj, mode="w") as tar:
        _add_bytes(tar, "Dockerfile", DOCKERFILE.encode())
        for source, target in runtime_files():
            tar.add(source, arcname="rootfs" + target, recursive=False, filter=_root_owned)
        for name, data in _system_files().items():
            _add_bytes(tar, "rootfs" + name, data)
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        for link in (f"{PREFIX}/bin/python3", f"{PREFIX}/bin/python", "/usr/bin/python3"):
            _add_symlink(tar, "rootfs" + link, f"{PREFIX}/bin/{version}")
        for directory in ("/tmp", "/app", CODE_DIR):
            _add_dir(tar, "rootfs" + directory, mode=0o1777 if directory == "/tmp" else 0o755)
        if code:
            for source, target in _walk(os.path.abspath(code), CODE_DIR):
                tar.add(source, arcname="rootfs" + target, recursive=False, filter=_root_owned)


def runtime_files() -> Iterable[tuple[str, str]]:
    """(host path, image path) for the interpreter, its libraries and the stdlib."""
    executable = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = sysconfig.get_path("stdlib")
    yield executable, f"{PREFIX}/bin/{version}"
    target_stdlib = f"{PREFIX}/lib/{version}"
    yield from _walk(stdlib, target_stdlib, skip_top=STDLIB_SKIP, skip_prefix="config-")
    libraries = set(_shared_libraries(executable))
    dynload = os.path.join(stdlib, "lib-dynload")
    for name in os.listdir(dynload):
        if name.endswith(".so"):
            libraries.update(_shared_libraries(os.path.join(dynload, name)))
    for library in sorted(libraries):
        # Same absolute paths as on this host (every hop of a symlink chain), so
        # RUNPATHs and the dynamic loader find them.
        for hop in _link_chain(library):
            yield hop, hop


def _link_chain(path: str) -> list[str]:
    chain = [path]
    while os.path.islink(chain[-1]) and len(chain) < 16:
        chain.append(os.path.normpath(os.path.join(os.path.dirname(chain[-1]), os.readlink(chain[-1]))))
    real = os.path.realpath(path)
    return chain if real in chain else chain + [real]


def _system_files() -> dict[str, bytes]:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return {
        "/etc/passwd": b"root:x:0:0:root:/root:/sbin/nologin\njob:x:10001:10001:job:/tmp:/sbin/nologin\n",
        "/etc/group": b"root:x:0:\njob:x:10001:\n",
        f"{PREFIX}/lib/{version}/site-packages/README.txt": b"jobyard job image: user code is in /app/code\n",
    }


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


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode &= 0o755 if info.isdir() or info.mode & 0o111 else 0o644
    if info.isdir():
        info.mode |= 0o755
    elif not info.issym():
        info.mode |= 0o644
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


def _add_dir(tar: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _mib(fileobj) -> int:
    fileobj.seek(0, os.SEEK_END)
    size = fileobj.tell()
    fileobj.seek(0)
    return size // (1024 * 1024)
