"""``jobyard image build``: a self-contained Python job image from local files.

No registry is needed: the image is ``FROM scratch`` and holds a copy of the
interpreter running this command (binary, shared libraries found by ``ldd``, the
standard library without tests and tooling) plus, optionally, a directory of the
user's modules at ``/app/code`` and wheels of their requirements at ``/app/deps``,
both on ``PYTHONPATH``. Requirements are installed by this interpreter's pip, so the
wheels match the image's Python. Every module carries hash-based bytecode, valid on
the read-only root whatever the files' mtimes. Jobs run in it as uid 10001.

The parts: :mod:`.rootfs` (what the image holds), :mod:`.requirements` (pip),
:mod:`.bytecode` (compileall), :mod:`.image_context` (the tar), :mod:`.push`.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import docker
import docker.errors

from tasks.errors import InvalidJobSpec
from tasks.images import ImageRef, parse_image_ref

from .bytecode import compile_bytecode
from .errors import ImageBuildError
from .image_context import write_context
from .requirements import check_requirements, install_requirements
from .rootfs import CODE_DIR, DEPS_DIR, Tree, stdlib_tree

DEFAULT_TAG = "jobyard/python:latest"


@dataclass(frozen=True)
class BuiltImage:
    """What a build produced."""

    tag: str
    id: str
    size: int
    seconds: float


def build_image(client: docker.DockerClient, tag: str = DEFAULT_TAG, code: str | None = None,
                requirements: str | None = None,
                progress: Callable[[str], None] = lambda line: None) -> BuiltImage:
    """Assemble the build context from this machine's Python and build ``tag``.

    ``code`` is a directory of the user's modules (``/app/code``); ``requirements`` a
    pip requirements file whose wheels go into ``/app/deps``.
    """
    image_ref(tag)
    if code is not None and not os.path.isdir(code):
        raise ImageBuildError(f"--code {code!r} is not a directory")
    if requirements is not None:
        check_requirements(requirements)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="jobyard-build-") as work, tempfile.TemporaryFile() as context:
        _prepare_context(context, work, code, requirements, progress)
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


def _prepare_context(context, work: str, code: str | None, requirements: str | None,
                     progress: Callable[[str], None]) -> None:
    """Install the requirements, compile everything and write the build context, in ``work``."""
    trees = [Tree(os.path.abspath(code), CODE_DIR)] if code else []
    if requirements is not None:
        install_requirements(requirements, os.path.join(work, "deps"), progress)
        trees.append(Tree(os.path.join(work, "deps"), DEPS_DIR, skip_top=frozenset({"bin"})))
    progress("compiling bytecode (hash-based pycs) for the standard library"
             + (", the requirements" if requirements is not None else "") + (" and the code" if code else ""))
    pycs = compile_bytecode([stdlib_tree(), *trees], os.path.join(work, "pycache"), progress)
    progress("assembling the Python runtime from local files")
    write_context(context, trees, pycs)
    context.seek(0)


def image_ref(tag: str) -> ImageRef:
    """``--tag`` parsed: an image reference naming a tag, not a digest."""
    try:
        ref = parse_image_ref(tag)
    except InvalidJobSpec as exc:
        raise ImageBuildError(f"--tag {tag!r} is not an image reference ({exc.message})") from None
    if ref.digest:
        raise ImageBuildError(f"--tag {tag!r} must name a tag, not a digest (a push prints the digest)")
    return ref


def _mib(fileobj) -> int:
    fileobj.seek(0, os.SEEK_END)
    size = fileobj.tell()
    fileobj.seek(0)
    return size // (1024 * 1024)
