"""The host policy on image references: registry globs on the normalised form, --require-digest,
and the spec's image validation through tasks.images (pure tables), then a real agent refusing."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from executor.policy import HostPolicy
from jobyard.agent_command import agent as agent_command
from tasks import command_job
from tasks.errors import InvalidJobSpec, JobRejected
from tasks.spec import JobSpec

DIGEST = "sha256:" + "ab" * 32
OURS = "registry.example:5000"


def _spec(image: str) -> JobSpec:
    return JobSpec.build(name="policy.image", kind="command", command=["true"], image=image)


@pytest.mark.pure
@pytest.mark.parametrize("image", [
    "busybox\n",                        # a trailing newline slipped past the old regex's "$"
    "0123456789abcdef" * 4,             # an image id, not a reference
    "-bad.example/team/app:v1",         # a registry host may not start with '-'
    "busybox:v\u00e9",                  # tags are ASCII
    "registry.example/" + "a" * 250,    # longer than Docker's 255-character name
])
def test_spec_refuses_what_docker_would_not_parse(image):
    with pytest.raises(InvalidJobSpec) as info:
        _spec(image)
    assert info.value.field == "image"


@pytest.mark.pure
@pytest.mark.parametrize("image", ["busybox", "team/app", f"{OURS}/team/app:v3", f"{OURS}/team/app@{DIGEST}",
                                   "localhost/app", "jobyard-test/busybox:latest", f"busybox:1@{DIGEST}"])
def test_spec_keeps_the_image_as_the_caller_gave_it(image):
    assert _spec(image).image == image


#: (allowed globs, require_digest, image, rule broken or None)
CASES = [
    (("*",), False, "busybox", None),
    (("docker.io/library/*",), False, "busybox", None),
    (("docker.io/library/*",), False, "index.docker.io/library/busybox:1", None),
    (("docker.io/library/*",), False, "team/app", "image"),
    (("docker.io/*",), False, "team/app", None),
    (("jobyard-test/*",), False, "jobyard-test/busybox:latest", None),
    # Neither as written nor normalised: a registry-qualified glob covers both spellings.
    (("jobyard-test/*",), False, "docker.io/jobyard-test/busybox:latest", "image"),
    (("docker.io/jobyard-test/*",), False, "jobyard-test/busybox:latest", None),
    (("docker.io/library/busybox:latest",), False, "busybox", None),
    ((f"{OURS}/*",), False, f"{OURS}/team/app:v3", None),
    ((f"{OURS}/*",), False, f"{OURS}/team/app@{DIGEST}", None),
    ((f"{OURS}/*",), False, "other.example:5000/team/app:v3", "image"),
    ((f"{OURS}/*",), False, "registry.example:50001/team/app:v3", "image"),
    ((f"{OURS}/*",), False, "busybox", "image"),
    ((f"{OURS}/*",), False, "registry.example/team/app", "image"),
    ((f"{OURS}/team/app:*",), False, f"{OURS}/team/app@{DIGEST}", "image"),
    ((f"{OURS}/team/app@*",), False, f"{OURS}/team/app@{DIGEST}", None),
    (("*",), True, f"{OURS}/team/app:v3", "digest"),
    (("*",), True, "busybox", "digest"),
    (("*",), True, f"{OURS}/team/app@{DIGEST}", None),
    (("*",), True, f"{OURS}/team/app:v3@{DIGEST}", None),
    ((f"{OURS}/*",), True, f"other.example/team/app@{DIGEST}", "image"),
]


@pytest.mark.pure
@pytest.mark.parametrize("allowed, require_digest, image, rule", CASES)
def test_policy_on_images(allowed, require_digest, image, rule):
    policy = HostPolicy(allowed_images=allowed, **({"require_digest": True} if require_digest else {}))
    spec = _spec(image)
    if rule is None:
        policy.check(spec)
        return
    with pytest.raises(JobRejected) as info:
        policy.check(spec)
    assert info.value.details["rule"] == rule
    assert info.value.details["reason"] == "policy"
    assert info.value.details["image"] == image


@pytest.mark.pure
def test_a_refused_registry_is_named_with_the_normalised_reference():
    with pytest.raises(JobRejected) as info:
        HostPolicy(allowed_images=(f"{OURS}/*",)).check(_spec("other.example/team/app"))
    assert info.value.details == {"rule": "image", "reason": "policy", "image": "other.example/team/app",
                                  "normalised": "other.example/team/app:latest", "registry": "other.example"}
    assert "other.example/team/app:latest" in str(info.value) and f"{OURS}/*" in str(info.value)


@pytest.mark.pure
def test_require_digest_is_an_agent_flag():
    result = CliRunner().invoke(agent_command, ["--help"])
    assert "--require-digest" in result.output


def test_an_agent_refuses_another_registry_and_an_unpinned_image_before_any_pull(agents):
    agents.start("images", "--cpus", "1", "--memory", "512Mi", "--queues", "policy-images",
                 "--allow-image", f"{OURS}/*", "--require-digest")
    cases = ((f"other.example:5000/team/app@{DIGEST}", "image"), (f"{OURS}/team/app:v1", "digest"))
    for image, rule in cases:
        probe = command_job("policy.registry", image=image, command=["true"], memory="32Mi", queue="policy-images")
        started = time.monotonic()
        with pytest.raises(JobRejected) as info:
            probe.delay().get(timeout=60)
        assert time.monotonic() - started < 20, "a policy refusal must not wait for a pull"
        assert info.value.details["rule"] == rule and info.value.details["reason"] == "policy", info.value
        assert info.value.details["image"] == image


@pytest.mark.pure
@pytest.mark.parametrize("content, message", [
    (None, "cannot read the registry config"),
    ("{not json", "is not JSON"),
    ('{"auths": {"registry.example:5000": "hunter2-Secret"}}', "auths must map registries"),
])
def test_agent_refuses_a_registry_config_it_cannot_use(tmp_path, content, message):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(agent_command, ["--registry-config", str(path)])
    assert result.exit_code == 2 and "--registry-config" in result.output and message in result.output, result.output
    assert "hunter2" not in result.output
