"""Registry credentials from a Docker config file: auths, credHelpers, credsStore."""

from __future__ import annotations

import base64
import json
import os
import stat
import textwrap

import pytest

from executor.credentials import AuthConfig, CredentialsError, DockerConfig, RegistryCredentials, registry_host

pytestmark = pytest.mark.pure

SECRET = "s3cr3t-Pa55"
HELPER_SECRET = "helper-Secret-42"


def _write_helper(directory, name: str, body: str) -> None:
    path = os.path.join(directory, f"docker-credential-{name}")
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\n" + textwrap.dedent(body))
    os.chmod(path, stat.S_IRWXU)


@pytest.fixture
def helpers(tmp_path, monkeypatch):
    """A directory of the test's own credential helpers, first on PATH."""
    directory = tmp_path / "bin"
    directory.mkdir()
    log = tmp_path / "asked"
    _write_helper(directory, "jobyardtest", f"""\
        read server
        echo "$server" >> {log}
        case "$server" in
          helped.example:5000|https://index.docker.io/v1/)
            echo '{{"ServerURL":"'"$server"'","Username":"helper-user","Secret":"{HELPER_SECRET}"}}' ;;
          tokens.example)
            echo '{{"ServerURL":"tokens.example","Username":"<token>","Secret":"{HELPER_SECRET}"}}' ;;
          *) echo "credentials not found in native keychain"; exit 1 ;;
        esac
        """)
    _write_helper(directory, "broken", f"""\
        echo "oops {HELPER_SECRET}" >&2
        echo "{HELPER_SECRET}"
        exit 3
        """)
    _write_helper(directory, "garbage", f"echo 'not json {HELPER_SECRET}'\n")
    _write_helper(directory, "slow", "sleep 10\n")
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")
    return log


def _config(tmp_path, data: dict) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return str(path)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_auths_entries_in_every_form(tmp_path):
    config = DockerConfig.load(_config(tmp_path, {"auths": {
        "127.0.0.1:5000": {"auth": _b64(f"team:{SECRET}")},
        "http://plain.example:5001/v2/": {"username": "u2", "password": SECRET},
        "https://index.docker.io/v1/": {"auth": _b64(f"hubuser:{SECRET}:with-colon")},
        "tokens.example": {"identitytoken": SECRET},
        "empty.example": {},
    }}))
    assert config.auth_config("127.0.0.1:5000") == {"username": "team", "password": SECRET,
                                                    "serveraddress": "127.0.0.1:5000"}
    assert config.auth_config("plain.example:5001")["username"] == "u2"
    for hub in ("docker.io", "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/"):
        assert config.auth_config(hub) == {"username": "hubuser", "password": f"{SECRET}:with-colon",
                                           "serveraddress": "https://index.docker.io/v1/"}
    assert config.auth_config("tokens.example") == {"identitytoken": SECRET, "serveraddress": "tokens.example"}
    assert config.auth_config("empty.example") == {}
    assert config.credentials("elsewhere.example") is None
    assert config.auth_config("elsewhere.example") == {}


@pytest.mark.parametrize(("key", "host"), [
    ("https://index.docker.io/v1/", "docker.io"), ("index.docker.io", "docker.io"), ("docker.io", "docker.io"),
    ("registry-1.docker.io", "docker.io"), ("http://127.0.0.1:5000", "127.0.0.1:5000"),
    ("https://Reg.Example:443/v2/", "reg.example:443"), ("127.0.0.1:5000", "127.0.0.1:5000"),
])
def test_registry_keys_normalise_like_docker(key, host):
    assert registry_host(key) == host


def test_cred_helpers_win_for_their_registry(tmp_path, helpers):
    config = DockerConfig.load(_config(tmp_path, {
        "auths": {"helped.example:5000": {"auth": _b64(f"file-user:{SECRET}")}},
        "credHelpers": {"helped.example:5000": "jobyardtest", "tokens.example": "jobyardtest"},
    }))
    assert config.auth_config("helped.example:5000") == {"username": "helper-user", "password": HELPER_SECRET,
                                                         "serveraddress": "helped.example:5000"}
    assert config.auth_config("tokens.example") == {"identitytoken": HELPER_SECRET,
                                                    "serveraddress": "tokens.example"}
    assert helpers.read_text().split() == ["helped.example:5000", "tokens.example"], "the host went on stdin"


def test_creds_store_then_auths(tmp_path, helpers):
    config = DockerConfig.load(_config(tmp_path, {
        "credsStore": "jobyardtest",
        "auths": {"file.example": {"auth": _b64(f"file-user:{SECRET}")}},
    }))
    assert config.auth_config("docker.io")["password"] == HELPER_SECRET
    assert config.auth_config("file.example")["username"] == "file-user", "store has none: the file's entry"
    assert config.auth_config("nowhere.example") == {}
    assert helpers.read_text().split() == ["https://index.docker.io/v1/", "file.example", "nowhere.example"]


@pytest.mark.parametrize(("helper", "words"), [
    ("broken", "exit status 3"), ("garbage", "no JSON"), ("slow", "did not answer"), ("absent", "not on PATH"),
])
def test_a_failing_helper_is_a_typed_error_without_its_output(tmp_path, helpers, helper, words):
    config = DockerConfig.load(_config(tmp_path, {"credHelpers": {"reg.example": helper}}), helper_timeout=0.5)
    with pytest.raises(CredentialsError) as caught:
        config.auth_config("reg.example")
    assert words in str(caught.value) and "reg.example" in str(caught.value)
    assert HELPER_SECRET not in repr(caught.value)


def test_missing_files(tmp_path, monkeypatch):
    with pytest.raises(CredentialsError, match="cannot read the registry config"):
        DockerConfig.load(str(tmp_path / "absent.json"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-such-dir"))
    assert DockerConfig.load().auth_config("docker.io") == {}, "a missing default config means anonymous"
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    _config(tmp_path, {"auths": {"x.example": {"username": "u", "password": SECRET}}})
    assert DockerConfig.load().auth_config("x.example")["password"] == SECRET


@pytest.mark.parametrize("data", [
    "not json", "[]", json.dumps({"auths": []}), json.dumps({"auths": {"x": "y"}}),
    json.dumps({"auths": {"x": {"auth": "!!!" + SECRET}}}), json.dumps({"auths": {"x": {"auth": _b64(SECRET)}}}),
    json.dumps({"auths": {"x": {"username": 5, "password": SECRET}}}), json.dumps({"credsStore": "../bin/sh"}),
    json.dumps({"credHelpers": {"x": "a b"}}), json.dumps({"credHelpers": {"x": 3}}),
])
def test_malformed_configs_are_refused_without_secrets(tmp_path, data):
    path = tmp_path / "config.json"
    path.write_text(data)
    with pytest.raises(CredentialsError) as caught:
        DockerConfig.load(str(path)).auth_config("x")
    assert SECRET not in str(caught.value) and _b64(SECRET) not in str(caught.value)


def test_reprs_redact_every_secret():
    for creds in (RegistryCredentials("r.example", "someone", SECRET),
                  RegistryCredentials("r.example", identity_token=SECRET)):
        auth = creds.auth_config()
        assert isinstance(auth, dict) and SECRET in auth.values()
        for shown in (repr(creds), str(creds), f"{creds}", repr(auth), str(auth), f"{auth!s}", repr([auth])):
            assert SECRET not in shown and "someone" not in shown, shown
        assert "r.example" in repr(creds)
    assert json.loads(json.dumps(AuthConfig(password=SECRET))) == {"password": SECRET}, "the SDK can encode it"
