"""Pulls from a real loopback registry: the digest that was pulled, and typed failures."""

from __future__ import annotations

import time

import docker
import pytest

from executor.pull import PROGRESS_INTERVAL, _Progress, pull_image
from tasks.errors import BackendError, ImageNotFound, ImagePullFailed
from tasks.images import parse_image_ref
from tests.support.registry import Registry


def _pull_fails(client, reference: str, auth_config: dict, timeout: float = 30.0) -> tuple[ImagePullFailed, float]:
    started = time.monotonic()
    with pytest.raises(ImagePullFailed) as caught:
        pull_image(client, reference, auth_config, timeout=timeout)
    return caught.value, time.monotonic() - started


def _names_the_image_only(error: ImagePullFailed, registry: str, repository: str, secret: str) -> None:
    assert (error.registry, error.repository) == (registry, repository)
    assert f"{registry}/{repository}" in error.message
    assert not isinstance(error, ImageNotFound)
    assert secret not in repr(error) and secret not in str(error.details)


def test_pull_with_good_credentials_returns_the_pushed_digest(docker_client, absent):
    seen: list[str] = []
    digest = pull_image(docker_client, absent.reference, absent.registry.auth_config, timeout=60,
                        on_progress=seen.append)
    assert digest == absent.digest
    assert f"{absent.registry.host}/team/app@{absent.digest}" in docker_client.api.inspect_image(
        absent.reference)["RepoDigests"]
    assert seen and seen[0].startswith(f"pulling {absent.reference}: layer ")
    pinned = f"{absent.registry.host}/team/app@{absent.digest}"
    assert pull_image(docker_client, pinned, absent.registry.auth_config, timeout=60) == absent.digest


def test_wrong_password_is_auth_within_seconds(docker_client, absent):
    wrong = {"username": absent.registry.username, "password": "wrong-" + absent.registry.password}
    for auth_config in (wrong, {}):
        error, took = _pull_fails(docker_client, absent.reference, auth_config)
        assert error.reason == "auth", error.message
        assert took < 10, f"an auth failure took {took:.1f}s"
        _names_the_image_only(error, absent.registry.host, "team/app", wrong["password"])


def test_missing_tag_is_not_found(docker_client, pushed):
    error, _ = _pull_fails(docker_client, f"{pushed.registry.host}/team/app:no-such-tag", pushed.registry.auth_config)
    assert error.reason == "not_found", error.message
    _names_the_image_only(error, pushed.registry.host, "team/app", pushed.registry.password)
    error, _ = _pull_fails(docker_client, f"{pushed.registry.host}/team/other:v1", pushed.registry.auth_config)
    assert error.reason == "not_found", error.message


def test_stopped_registry_is_unreachable(docker_client):
    gone = Registry().start()
    gone.remove()
    error, took = _pull_fails(docker_client, f"{gone.host}/team/app:v1", gone.auth_config)
    assert error.reason == "unreachable", error.message
    assert took < 10
    _names_the_image_only(error, gone.host, "team/app", gone.password)


def test_registry_that_never_answers_times_out_within_the_bound(docker_client, silent_registry):
    error, took = _pull_fails(docker_client, f"{silent_registry}/team/app:v1", {}, timeout=2)
    assert error.reason == "timeout", error.message
    assert 2 <= took < 4, f"a 2 s pull bound took {took:.1f}s"


def test_unreachable_engine_is_a_backend_error(absent):
    client = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41", timeout=5)
    with pytest.raises(BackendError) as caught:
        pull_image(client, absent.reference, absent.registry.auth_config, timeout=10)
    assert not isinstance(caught.value, ImagePullFailed)


@pytest.mark.pure
def test_progress_is_reported_at_most_once_a_second():
    seen: list[str] = []
    progress = _Progress(parse_image_ref("reg.example/team/app:v1"), seen.append)
    progress.feed({"status": "Pulling from team/app", "id": "v1"})
    for layer in ("a", "b", "c"):
        progress.feed({"status": "Pulling fs layer", "id": layer, "progressDetail": {}})
    for current in range(0, 1000, 10):
        progress.feed({"status": "Downloading", "id": "a", "progressDetail": {"current": current, "total": 1000}})
    progress.feed({"status": "Pull complete", "id": "b", "progressDetail": {}})
    assert seen == ["pulling reg.example/team/app:v1: layer 0/0, 0 of 0 bytes"]
    progress.last -= PROGRESS_INTERVAL
    progress.feed({"status": "Digest: sha256:" + "a" * 64})
    assert seen[-1] == "pulling reg.example/team/app:v1: layer 1/3, 990 of 1000 bytes"
    assert progress.digest == "sha256:" + "a" * 64


@pytest.mark.pure
def test_a_missing_registry_binary_fails_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="docker-registry is not installed"):
        Registry(workdir=str(tmp_path / "registry")).start()


@pytest.mark.pure
def test_pull_failures_survive_json_like_every_job_error():
    import json

    from tasks.errors import JobError

    error = ImagePullFailed("image pull failed (auth): r.example/team/app: unauthorized", reason="auth",
                            registry="r.example", repository="team/app")
    rebuilt = ImagePullFailed(*json.loads(json.dumps(error.args)))
    assert isinstance(rebuilt, JobError) and not isinstance(rebuilt, ImageNotFound)
    assert (rebuilt.reason, rebuilt.registry, rebuilt.repository) == ("auth", "r.example", "team/app")
    with pytest.raises(ValueError):
        ImagePullFailed("x", reason="because")
