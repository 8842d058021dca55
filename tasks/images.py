"""Image references, parsed and normalised the way Docker reads them.

``busybox`` is ``docker.io/library/busybox:latest``, ``team/app`` is
``docker.io/team/app:latest``; the first path component is a registry host only when
it contains ``.`` or ``:``, is ``localhost``, or has upper-case letters (as in
Docker's ``splitDockerDomain``). Digests are ``sha256:`` and 64 hex digits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidJobSpec

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
#: Docker's limit on the length of a name (registry and repository).
MAX_NAME = 255

_DOMAIN = re.compile(r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
                     r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]{1,5})?")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_HEX64 = re.compile(r"[a-f0-9]{64}")


@dataclass(frozen=True)
class ImageRef:
    """A normalised image reference: ``registry/repository[:tag][@digest]``.

    ``tag`` is ``None`` only when the reference is pinned by digest alone.
    """

    registry: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``, with no tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def normalised(self) -> str:
        """The full reference, e.g. ``docker.io/library/busybox:latest``."""
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.name}{tag}{digest}"

    @property
    def pinned(self) -> bool:
        """Whether the reference names a digest, so it always means the same image."""
        return self.digest is not None

    def __str__(self) -> str:
        return self.normalised


def _invalid(reference: object, why: str) -> InvalidJobSpec:
    shown = repr(reference) if len(repr(reference)) <= 120 else repr(reference)[:117] + "..."
    return InvalidJobSpec(f"invalid job spec: image: {shown}: {why}", field="image")


def _split_digest(reference: str) -> tuple[str, str | None]:
    name, at, digest = reference.partition("@")
    if not at:
        return reference, None
    if not _DIGEST.fullmatch(digest):
        raise _invalid(reference, "a digest must be sha256: and 64 lower-case hex digits")
    return name, digest


def _split_tag(name: str) -> tuple[str, str | None]:
    # A ':' after the last '/' starts the tag; one before it is a registry port.
    head, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:
        return name, None
    return head, tag


def _split_registry(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        return first, rest
    return DEFAULT_REGISTRY, name


def _check_registry(reference: str, registry: str) -> str:
    if not _DOMAIN.fullmatch(registry):
        raise _invalid(reference, f"registry {registry!r} is not a host[:port]")
    if registry == "index.docker.io":
        return DEFAULT_REGISTRY
    return registry


def _check_repository(reference: str, registry: str, repository: str) -> str:
    components = repository.split("/")
    for component in components:
        if not _COMPONENT.fullmatch(component):
            raise _invalid(reference, "a repository is lower-case letters, digits and separators (. _ __ -)")
    if registry == DEFAULT_REGISTRY and len(components) == 1:
        repository = f"library/{repository}"
    if len(f"{registry}/{repository}") > MAX_NAME:
        raise _invalid(reference, f"the name is longer than {MAX_NAME} characters")
    return repository


def parse_image_ref(reference: object) -> ImageRef:
    """Parse and normalise ``reference``; a malformed one is ``InvalidJobSpec(field="image")``."""
    if not isinstance(reference, str) or not reference:
        raise _invalid(reference, "an image is a non-empty string")
    if len(reference) > MAX_NAME + 1 + 128 + 1 + 71:
        raise _invalid(reference, "too long for an image reference")
    if _HEX64.fullmatch(reference):
        raise _invalid(reference, "64 hex digits are an image id, not a reference")
    name, digest = _split_digest(reference)
    name, tag = _split_tag(name)
    if tag is not None and not _TAG.fullmatch(tag):
        raise _invalid(reference, "a tag is up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'")
    registry, repository = _split_registry(name)
    registry = _check_registry(reference, registry)
    repository = _check_repository(reference, registry, repository)
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageRef(registry, repository, tag, digest)


def normalise_image(reference: object) -> str:
    """The normalised form of ``reference`` (``docker.io/library/busybox:latest``)."""
    return parse_image_ref(reference).normalised
