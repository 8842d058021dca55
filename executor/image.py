"""``jobyard image build``: a self-contained Python job image from local files.

No registry is needed: the image is ``FROM scratch`` and holds a copy of the
interpreter running this command (binary, shared libraries found by ``ldd``, the
standard library without tests and tooling) plus, optionally, a directory of the
user's modules at ``/app/code`` and wheels of their requirements at ``/app/deps``,
both on ``PYTHONPATH``. Requirements are installed by this interpreter's pip, so the
wheels match the image's Python. Every module carries hash-based bytecode, valid on
the read-only root whatever the files' mtimes. Jobs run in it as uid 10001.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import logging
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import docker
import docker.errors
import requests.exceptions

from tasks.errors import InvalidJobSpec
from tasks.images import ImageRef, parse_image_ref

from .credentials import AuthConfig, CredentialsError, DockerConfig
from .errors import ImageBuildError
from .pull import classify

log = logging.getLogger(__name__)

DEFAULT_TAG = "jobyard/python:latest"
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
_URL_USER = re.compile(r"(\w+://)[^/@\s]+@")
MAX_REQUIREMENTS_BYTES = 1024 * 1024
PIP_TIMEOUT = 900.0
PIP_TAIL_LINES = 12
#: Hash-based pycs stay valid on the read-only root whatever the files' mtimes. The
#: code and requirements are checked: an image built ``FROM`` ours that copies a changed
#: module over runs the new source, not stale bytecode. The stdlib, which nobody
#: overwrites and which every start imports, is unchecked: hashing it costs ~5 ms a start.
CHECKED = "checked-hash"
UNCHECKED = "unchecked-hash"
COMPILE_TIMEOUT = 300.0
PUSH_REPORT_INTERVAL = 1.0

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


@dataclass(frozen=True)
class BuiltImage:
    """What a build produced."""

    tag: str
    id: str
    size: int
    seconds: float


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
    pycs = compile_bytecode([_stdlib_tree(), *trees], os.path.join(work, "pycache"), progress)
    progress("assembling the Python runtime from local files")
    _write_context(context, trees, pycs)
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
            line = _redact(raw.rstrip())
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


def _redact(text: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://***@host``: pip's own output should not need it."""
    return _URL_USER.sub(r"\1***@", text)


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
    deadline = time.monotonic() + COMPILE_TIMEOUT
    for process, names in processes:
        try:
            process.communicate("\n".join(names), timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other, _ in processes:
                other.kill()
                other.wait()
            raise ImageBuildError(f"compileall did not finish within {COMPILE_TIMEOUT:g}s") from None
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


def _cached_pyc(cache_dir: str, source: str) -> str:
    """Where ``-X pycache_prefix`` puts the pyc of ``source`` (importlib's layout)."""
    directory, name = os.path.split(os.path.abspath(source))
    return os.path.join(cache_dir, directory.lstrip(os.sep), f"{name[:-3]}.{sys.implementation.cache_tag}.pyc")


def _image_pyc(target: str) -> str:
    directory, name = os.path.split(target)
    return f"{directory}/__pycache__/{name[:-3]}.{sys.implementation.cache_tag}.pyc"


def push_auth(tag: str, registry_config: str | None = None) -> AuthConfig:
    """Credentials for ``tag``'s registry, found as the agent finds them.

    ``registry_config`` is a Docker config.json; with none, ``$DOCKER_CONFIG/config.json``
    then ``~/.docker/config.json``; none there means an anonymous push.
    """
    ref = image_ref(tag)
    try:
        return DockerConfig.load(registry_config).auth_config(ref.registry)
    except CredentialsError as exc:
        raise ImageBuildError(f"no credentials to push to {ref.registry}: {exc}") from None


def check_login(client: docker.DockerClient, tag: str, auth_config: dict) -> None:
    """Have the engine log in to ``tag``'s registry, so bad credentials fail before a build.

    Only for a user and password; anonymous and token pushes are checked by the push.
    """
    if not auth_config.get("username"):
        return
    ref = image_ref(tag)
    try:
        client.login(username=auth_config["username"], password=auth_config.get("password", ""),
                     registry=auth_config.get("serveraddress") or ref.registry, reauth=True)
    except docker.errors.APIError as exc:
        raise _push_failed(ref, str(exc.explanation or exc)) from None
    except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
        raise ImageBuildError(f"cannot reach the Docker Engine to log in to {ref.registry}: "
                              f"{type(exc).__name__}") from None


def push_image(client: docker.DockerClient, tag: str, auth_config: dict,
               progress: Callable[[str], None] = lambda line: None) -> str:
    """Push ``tag`` through the docker SDK; return the pinned ``registry/repository@sha256:…``.

    A failure is an :class:`ImageBuildError` naming the registry and the reason
    (``auth``, ``not_found``, ``timeout``, ``unreachable``), never the credentials.
    """
    ref = image_ref(tag)
    progress(f"pushing {ref.normalised} to {ref.registry}")
    report = _PushProgress(ref, progress)
    try:
        # An empty auth_config is sent as such: anonymous, never the engine user's own config.
        for line in client.api.push(ref.name, ref.tag, stream=True, decode=True, auth_config=dict(auth_config)):
            if "error" in line:
                raise _push_failed(ref, str(line["error"]))
            report.feed(line)
    except docker.errors.APIError as exc:
        raise _push_failed(ref, str(exc.explanation or exc)) from None
    except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
        raise ImageBuildError(f"cannot reach the Docker Engine to push {ref.normalised}: "
                              f"{type(exc).__name__}") from None
    if report.digest is None:
        raise _push_failed(ref, "the engine reported no digest")
    progress(f"pushed {ref.normalised}: {report.done()} layers, {report.digest}")
    return f"{ref.name}@{report.digest}"


def _push_failed(ref: ImageRef, why: str) -> ImageBuildError:
    why = _redact(why)[:300]
    return ImageBuildError(f"push of {ref.normalised} to registry {ref.registry} failed ({classify(why)}): {why}")


class _PushProgress:
    """Layer counts from push stream lines, reported at most once an interval; the digest."""

    FINISHED = ("Pushed", "Layer already exists", "Mounted from")

    def __init__(self, ref: ImageRef, progress: Callable[[str], None]):
        self.ref, self.progress = ref, progress
        self.layers: dict[str, str] = {}
        self.digest: str | None = None
        self.last = time.monotonic()

    def feed(self, line: dict) -> None:
        aux = line.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("Digest"), str):
            self.digest = aux["Digest"]
        if line.get("id") and line.get("status"):
            self.layers[str(line["id"])] = str(line["status"])
        if time.monotonic() - self.last >= PUSH_REPORT_INTERVAL:
            self.last = time.monotonic()
            self.progress(f"pushing {self.ref.normalised}: layer {self.done()}")

    def done(self) -> str:
        """``finished/total`` layers."""
        finished = sum(1 for status in self.layers.values() if status.startswith(self.FINISHED))
        return f"{finished}/{len(self.layers)}"


def _write_context(fileobj, trees: list[Tree], pycs: list[tuple[str, str]]) -> None:
    with tarfile.open(fileobj=fileobj, mode="w") as tar:
        _add_bytes(tar, "Dockerfile", DOCKERFILE.encode())
        for source, target in runtime_files(trees):
            tar.add(source, arcname="rootfs" + target, recursive=False, filter=_root_owned)
        for name, data in _system_files().items():
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


def _stdlib_tree() -> Tree:
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
    yield from _stdlib_tree().files()
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


def _is_shared_object(name: str) -> bool:
    return name.endswith(".so") or ".so." in name


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
