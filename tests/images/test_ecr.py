"""Amazon ECR: through its credential helper, or tokens fetched with boto3 (moto, up to the token)."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import sys
from datetime import datetime, timezone

import pytest
from moto import mock_aws

from executor.credentials import CredentialsError, DockerConfig, EcrTokens, ecr_registry

pytestmark = pytest.mark.pure

HOST = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
#: What moto's get_authorization_token hands out for account 123456789012.
MOTO_PASSWORD = "123456789012-auth-token"
#: moto's tokens expire at this instant; the tests' clock starts 12 h before it.
MOTO_EXPIRY = datetime(2015, 1, 1, tzinfo=timezone.utc).timestamp()
HELPER_SECRET = "ecr-helper-Secret-7"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def aws(monkeypatch):
    """Fake AWS credentials and moto's ECR; nothing reaches AWS or the instance metadata."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_EC2_METADATA_DISABLED", "true"), ("AWS_CONFIG_FILE", os.devnull),
                        ("AWS_SHARED_CREDENTIALS_FILE", os.devnull)):
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield


@pytest.fixture
def fetches():
    """A boto3 client factory that counts the regions it was asked for."""
    import boto3

    asked: list[str] = []

    def factory(region: str):
        asked.append(region)
        return boto3.client("ecr", region_name=region)

    factory.asked = asked
    return factory


def _tokens(fetches, clock=None) -> EcrTokens:
    return EcrTokens(client_factory=fetches, clock=clock or Clock(MOTO_EXPIRY - 12 * 3600))


@pytest.mark.parametrize("host, expected", [
    (HOST, ("123456789012", "eu-west-1")),
    ("123456789012.dkr.ecr.us-gov-west-1.amazonaws.com", ("123456789012", "us-gov-west-1")),
    ("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", ("123456789012", "cn-north-1")),
    ("12345.dkr.ecr.eu-west-1.amazonaws.com", None),
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.example", None),
    ("public.ecr.aws", None),
    ("registry.example:5000", None),
])
def test_ecr_registries_are_recognised_by_host(host, expected):
    assert ecr_registry(host) == expected


def test_the_ecr_credential_helper_is_used_through_cred_helpers(tmp_path, monkeypatch):
    bin_dir, asked = tmp_path / "bin", tmp_path / "asked"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-ecr-login"
    helper.write_text(f"#!/bin/sh\nread server\necho \"$server\" >> {asked}\n"
                      f"echo '{{\"Username\":\"AWS\",\"Secret\":\"{HELPER_SECRET}\"}}'\n")
    helper.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"credHelpers": {HOST: "ecr-login"}}))
    config = DockerConfig.load(str(path), ecr=EcrTokens(client_factory=lambda region: pytest.fail("no boto3")))
    auth = config.auth_config(HOST)
    assert dict(auth) == {"username": "AWS", "password": HELPER_SECRET, "serveraddress": HOST}
    assert asked.read_text() == f"{HOST}\n"
    assert HELPER_SECRET not in repr(auth)


def test_a_token_is_fetched_with_boto3_when_the_config_has_no_entry(aws, fetches):
    config = DockerConfig({}, ecr=_tokens(fetches))
    auth = config.auth_config(HOST)
    assert dict(auth) == {"username": "AWS", "password": MOTO_PASSWORD, "serveraddress": HOST}
    assert fetches.asked == ["eu-west-1"]
    assert MOTO_PASSWORD not in repr(auth) and MOTO_PASSWORD not in repr(config.credentials(HOST))


def test_tokens_are_cached_per_registry_and_refreshed_before_they_expire(aws, fetches):
    clock = Clock(MOTO_EXPIRY - 12 * 3600)
    tokens = _tokens(fetches, clock)
    other = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    assert tokens.credentials(HOST).password == MOTO_PASSWORD
    clock.now = MOTO_EXPIRY - tokens.refresh_before - 1
    tokens.credentials(HOST)
    assert tokens.credentials(other).registry == other
    assert fetches.asked == ["eu-west-1", "us-east-1"]
    clock.now = MOTO_EXPIRY - tokens.refresh_before + 1
    assert tokens.credentials(HOST).password == MOTO_PASSWORD
    assert fetches.asked == ["eu-west-1", "us-east-1", "eu-west-1"]


def test_the_config_wins_over_a_token_fetch_and_other_registries_fetch_nothing(aws, fetches):
    auth = base64.b64encode(b"AWS:from-the-config").decode()
    config = DockerConfig({"auths": {HOST: {"auth": auth}}}, ecr=_tokens(fetches))
    assert config.auth_config(HOST)["password"] == "from-the-config"
    assert config.auth_config("registry.example:5000") == {}
    assert fetches.asked == []


def test_no_aws_credentials_is_a_credentials_error(monkeypatch, fetches):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (("AWS_EC2_METADATA_DISABLED", "true"), ("AWS_CONFIG_FILE", os.devnull),
                        ("AWS_SHARED_CREDENTIALS_FILE", os.devnull)):
        monkeypatch.setenv(name, value)
    with pytest.raises(CredentialsError) as info:
        _tokens(fetches).credentials(HOST)
    assert HOST in str(info.value) and "NoCredentialsError" in str(info.value)


def test_without_boto3_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(CredentialsError, match=r"jobyard\[aws\]"):
        EcrTokens().credentials(HOST)


class _Reply:
    """A client that answers get_authorization_token with ``data`` (malformed on purpose)."""

    def __init__(self, data):
        self.data = data

    def get_authorization_token(self, **_):
        return {"authorizationData": self.data}


@pytest.mark.parametrize("data", [
    [],
    [{"authorizationToken": "not base64!", "proxyEndpoint": f"https://{HOST}"}],
    [{"authorizationToken": base64.b64encode(b"no-colon-" + HELPER_SECRET.encode()).decode(),
      "proxyEndpoint": f"https://{HOST}"}],
    [{"authorizationToken": base64.b64encode(f"AWS:{HELPER_SECRET}".encode()).decode(),
      "proxyEndpoint": "https://999999999999.dkr.ecr.eu-west-1.amazonaws.com"}],
])
def test_a_malformed_token_is_refused_without_showing_it(data):
    with pytest.raises(CredentialsError) as info:
        EcrTokens(client_factory=lambda region: _Reply(data)).credentials(HOST)
    assert HELPER_SECRET not in str(info.value) and HOST in str(info.value)


def test_no_token_reaches_the_logs_even_at_debug(aws, fetches, caplog):
    caplog.set_level(logging.DEBUG)
    EcrTokens(clock=Clock(MOTO_EXPIRY - 12 * 3600)).credentials(HOST)
    encoded = base64.b64encode(f"AWS:{MOTO_PASSWORD}".encode()).decode()
    assert caplog.records, "boto3 logged nothing at DEBUG: this test would prove nothing"
    assert MOTO_PASSWORD not in caplog.text and encoded not in caplog.text
