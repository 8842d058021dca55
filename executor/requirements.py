"""A build's ``--requirements``: checked, then installed as wheels into what becomes ``/app/deps``."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import threading
from typing import Callable

from .errors import ImageBuildError
from .rootfs import DEPS_DIR

_URL_USER = re.compile(r"(\w+://)[^/@\s]+@")
MAX_REQUIREMENTS_BYTES = 1024 * 1024
PIP_TIMEOUT = 900.0
PIP_TAIL_LINES = 12


def check_requirements(path: str) -> None:
    """Refuse a requirements file that is missing, not a regular file, too large, not text or empty."""
    if not isinstance(path, str) or not os.path.isfile(path):
        raise ImageBuildError(f"--requirements {path!r} is not a file")
    if os.path.getsize(path) > MAX_REQUIREMENTS_BYTES:
        raise ImageBuildError(f"--requirements {path!r} is larger than {MAX_REQUIREMENTS_BYTES} bytes")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_REQUIREMENTS_BYTES + 1)
    except UnicodeDecodeError:
        raise ImageBuildError(f"--requirements {path!r} is not UTF-8 text") from None
    except OSError as exc:
        raise ImageBuildError(f"cannot read --requirements {path!r}: {exc.strerror}") from None
    # pip's comments start with '#' at a line's start or after whitespace (URLs keep '#sha256=').
    if not any(re.sub(r"(^|\s)#.*", "", line).strip() for line in text.splitlines()):
        raise ImageBuildError(f"--requirements {path!r} names no packages")


def install_requirements(requirements: str, target: str, progress: Callable[[str], None]) -> None:
    """``pip install --target`` the requirements as wheels only, with this interpreter's pip.

    This interpreter is the image's, so pip picks wheels for its version, ABI and libc.
    A failure is an :class:`ImageBuildError` with the tail of pip's output.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    progress(f"pip: installing {requirements} as wheels for Python {version} into {DEPS_DIR}")
    command = [sys.executable, "-m", "pip", "install", "--target", target, "--only-binary=:all:", "--no-compile",
               "--no-input", "--disable-pip-version-check", "--progress-bar", "off",
               "-r", os.path.abspath(requirements)]
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as exc:
        raise ImageBuildError(f"cannot run pip ({sys.executable} -m pip): {exc.strerror}") from None
    killed = threading.Event()
    timer = threading.Timer(PIP_TIMEOUT, lambda: (killed.set(), process.kill()))
    timer.start()
    tail: collections.deque[str] = collections.deque(maxlen=PIP_TAIL_LINES)
    try:
        for raw in process.stdout:
            line = redact(raw.rstrip())
            if line.strip():
                tail.append(line)
                progress(f"pip: {line.strip()}")
    finally:
        timer.cancel()
        process.stdout.close()
        status = process.wait()
    if killed.is_set():
        raise ImageBuildError(f"pip did not install the requirements from {requirements} within {PIP_TIMEOUT:g}s")
    if status != 0:
        shown = "\n".join(tail)
        raise ImageBuildError(f"pip could not install the requirements from {requirements} "
                              f"(exit status {status}):\n{shown}")


def redact(text: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://***@host`` in a tool's or the engine's output."""
    return _URL_USER.sub(r"\1***@", text)
