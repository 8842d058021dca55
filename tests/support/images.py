"""Build tiny real test images with no registry."""

from __future__ import annotations

import io
import os
import shutil
import tarfile

BUSYBOX_APPLETS = ("sh", "echo", "cat", "sleep", "ls", "id", "touch", "head", "tail", "dd", "yes",
                   "true", "false", "env", "wc", "nc", "mount", "ping", "sync", "kill")


def build_busybox(client, tag: str) -> str:
    """``docker import`` a rootfs holding Debian's static busybox and its applets."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        raise RuntimeError("busybox-static is not installed (run: bash deploy/setup.sh test)")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "tmp", "etc"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in BUSYBOX_APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        passwd = b"root:x:0:0:root:/:/bin/sh\njob:x:10001:10001:job:/tmp:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    client.api.import_image_from_data(buffer.getvalue(), repository=tag.split(":")[0],
                                      tag=tag.split(":")[1] if ":" in tag else "latest")
    return tag
