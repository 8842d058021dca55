"""Image references are parsed and normalised the way Docker reads them."""

from __future__ import annotations

import pytest

from tasks.errors import InvalidJobSpec
from tasks.images import ImageRef, normalise_image, parse_image_ref

pytestmark = pytest.mark.pure

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("reference", "registry", "repository", "tag", "digest"), [
    ("busybox", "docker.io", "library/busybox", "latest", None),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
    ("team/app", "docker.io", "team/app", "latest", None),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
    ("index.docker.io/team/app:v1", "docker.io", "team/app", "v1", None),
    ("127.0.0.1:5000/team/app:v3", "127.0.0.1:5000", "team/app", "v3", None),
    ("registry.example:5000/team/app", "registry.example:5000", "team/app", "latest", None),
    ("localhost/x", "localhost", "x", "latest", None),
    ("localhost:5000/a/b/c:T_1.2-x", "localhost:5000", "a/b/c", "T_1.2-x", None),
    ("Registry/app", "Registry", "app", "latest", None),
    ("my.registry/app@" + DIGEST, "my.registry", "app", None, DIGEST),
    ("busybox@" + DIGEST, "docker.io", "library/busybox", None, DIGEST),
    ("127.0.0.1:5000/team/app:v3@" + DIGEST, "127.0.0.1:5000", "team/app", "v3", DIGEST),
    ("team/a_b__c-d--e.f", "docker.io", "team/a_b__c-d--e.f", "latest", None),
])
def test_references_normalise_like_docker(reference, registry, repository, tag, digest):
    ref = parse_image_ref(reference)
    assert ref == ImageRef(registry, repository, tag, digest)
    assert ref.pinned is (digest is not None)
    again = parse_image_ref(ref.normalised)
    assert again == ref, "the normalised form parses to itself"


@pytest.mark.parametrize(("reference", "normalised"), [
    ("busybox", "docker.io/library/busybox:latest"),
    ("team/app", "docker.io/team/app:latest"),
    ("127.0.0.1:5000/team/app:v3", "127.0.0.1:5000/team/app:v3"),
    ("busybox@" + DIGEST, "docker.io/library/busybox@" + DIGEST),
    ("x.io/a:t@" + DIGEST, "x.io/a:t@" + DIGEST),
])
def test_normalised_form(reference, normalised):
    assert normalise_image(reference) == normalised
    assert str(parse_image_ref(reference)) == normalised


@pytest.mark.parametrize("reference", [
    "", " ", "busybox ", "Busybox", "team/App", "team//app", "/app", "app/", "busybox:", "busybox:-x", "busybox:t\u00e4", "b\u00fcsybox",
    "busybox:" + "t" * 129, "busybox@", "busybox@sha256:abc", "busybox@sha512:" + "a" * 128,
    "busybox@sha256:" + "A" * 64, "-reg.io/app", "reg.io:port/app", "reg_io.x/app", "a" * 64,
    "team/" + "a" * 300, "app;rm -rf", "app\n", "a..b", "a:b:c", "http://reg.io/app", None, 42, ["busybox"],
])
def test_malformed_references_name_the_image_field(reference):
    with pytest.raises(InvalidJobSpec) as caught:
        parse_image_ref(reference)
    assert caught.value.field == "image"
    assert len(caught.value.message) < 300, "a huge reference is not echoed in full"
