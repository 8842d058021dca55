"""The build context of a job image: its Dockerfile and its root filesystem, in one tar."""

from __future__ import annotations

import io
import os
import sys
import tarfile

from .rootfs import CODE_DIR, DEPS_DIR, PREFIX, Tree, runtime_files, system_files

DOCKERFILE = f"""FROM scratch
COPY rootfs/ /
ENV PATH={PREFIX}/bin:/usr/bin:/bin \\
    PYTHONPATH={CODE_DIR}:{DEPS_DIR} \\
    LANG=C.UTF-8 \\
    PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title="jobyard python job image" \\
      jobyard.image=python
USER 10001:10001
WORKDIR /tmp
CMD ["python3"]
"""


def write_context(fileobj, trees: list[Tree], pycs: list[tuple[str, str]]) -> None:
    """Write the Dockerfile and ``rootfs/`` (the runtime, ``trees``, ``pycs``) to ``fileobj`` as a tar.

    Everything in it is owned by root; only ``/tmp`` is writable by the job.
    """
    with tarfile.open(fileobj=fileobj, mode="w") as tar:
        _add_bytes(tar, "Dockerfile", DOCKERFILE.encode())
        for source, target in runtime_files(trees):
            tar.add(source, arcname="rootfs" + target, recursive=False, filter=_root_owned)
        for name, data in system_files().items():
            _add_bytes(tar, "rootfs" + name, data)
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        for link in (f"{PREFIX}/bin/python3", f"{PREFIX}/bin/python", "/usr/bin/python3"):
            _add_symlink(tar, "rootfs" + link, f"{PREFIX}/bin/{version}")
        for directory in ("/tmp", "/app", CODE_DIR, DEPS_DIR):
            _add_dir(tar, "rootfs" + directory, mode=0o1777 if directory == "/tmp" else 0o755)
        for tree in trees:
            for source, target in tree.files():
                tar.add(source, arcname="rootfs" + target, recursive=False, filter=_root_owned)
        for directory in sorted({os.path.dirname(target) for _, target in pycs}):
            _add_dir(tar, "rootfs" + directory, mode=0o755)
        for source, target in pycs:
            tar.add(source, arcname="rootfs" + target, recursive=False, filter=_root_owned)


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
