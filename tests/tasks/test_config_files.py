"""Table tests for secrets read from files: ``JOBYARD_BROKER_URL_FILE`` and
``JOBYARD_RESULT_BACKEND_FILE`` (pure: temporary files only, no services)."""

import os

import pytest

from tasks.config import Settings, read_secret, redact
from tasks.errors import JobyardError
from tasks.errors import SettingsError as ConfigError

pytestmark = pytest.mark.pure

SECRET = "redis://agent:s3cret-pw@redis.internal:6379/0"


def write(tmp_path, name, content: bytes | str) -> str:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    os.chmod(path, 0o600)
    return str(path)


@pytest.mark.parametrize("content, expected", [
    (SECRET, SECRET),
    (SECRET + "\n", SECRET),
    (SECRET + "\n\n", SECRET + "\n"),  # one trailing newline only, as `echo` writes it
    (" " + SECRET, " " + SECRET),
])
def test_a_file_gives_its_content_less_one_trailing_newline(tmp_path, content, expected):
    path = write(tmp_path, "url", content)
    assert read_secret({"JOBYARD_BROKER_URL_FILE": path}, "JOBYARD_BROKER_URL") == expected


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"JOBYARD_BROKER_URL": SECRET}, SECRET),
    ({"JOBYARD_BROKER_URL": SECRET, "JOBYARD_BROKER_URL_FILE": ""}, SECRET),
    ({"JOBYARD_BROKER_URL": ""}, None),
])
def test_without_a_file_the_variable_is_read(env, expected):
    assert read_secret(env, "JOBYARD_BROKER_URL") == expected


@pytest.mark.parametrize("problem, env, message", [
    ("both set", {"JOBYARD_BROKER_URL": SECRET, "JOBYARD_BROKER_URL_FILE": "{dir}/url"},
     "JOBYARD_BROKER_URL and JOBYARD_BROKER_URL_FILE are both set"),
    ("a missing file", {"JOBYARD_BROKER_URL_FILE": "{dir}/absent"}, "JOBYARD_BROKER_URL_FILE: cannot read"),
    ("a directory", {"JOBYARD_BROKER_URL_FILE": "{dir}"}, "JOBYARD_BROKER_URL_FILE: cannot read"),
    ("an empty file", {"JOBYARD_BROKER_URL_FILE": "{dir}/empty"}, "JOBYARD_BROKER_URL_FILE: {dir}/empty is empty"),
    ("not text", {"JOBYARD_BROKER_URL_FILE": "{dir}/binary"}, "JOBYARD_BROKER_URL_FILE: cannot read"),
    ("the backend's file missing", {"JOBYARD_RESULT_BACKEND_FILE": "{dir}/absent"},
     "JOBYARD_RESULT_BACKEND_FILE: cannot read"),
])
def test_a_bad_secret_file_is_a_clear_error_that_never_shows_the_secret(tmp_path, problem, env, message):
    write(tmp_path, "url", SECRET)
    write(tmp_path, "empty", "")
    write(tmp_path, "binary", b"\xffredis://:" + SECRET.encode())
    env = {name: value.format(dir=tmp_path) for name, value in env.items()}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert isinstance(caught.value, JobyardError), "one error root: tasks.errors.JobyardError"
    assert message.format(dir=tmp_path) in str(caught.value), problem
    assert "s3cret" not in repr(caught.value.args), f"{problem}: the error shows the secret"


def test_settings_read_both_urls_from_files_and_still_redact_them(tmp_path):
    backend = "redis://agent:other-pw@redis.internal:6379/3"
    env = {"JOBYARD_BROKER_URL_FILE": write(tmp_path, "broker", SECRET + "\n"),
           "JOBYARD_RESULT_BACKEND_FILE": write(tmp_path, "backend", backend + "\n")}
    settings = Settings.from_env(env)
    assert (settings.broker_url, settings.result_backend) == (SECRET, backend)
    assert "s3cret" not in redact(settings.broker_url) and "other-pw" not in redact(settings.result_backend)


def test_the_result_backend_defaults_to_the_broker_from_its_file(tmp_path):
    env = {"JOBYARD_BROKER_URL_FILE": write(tmp_path, "broker", SECRET)}
    assert Settings.from_env(env).result_backend == "redis://agent:s3cret-pw@redis.internal:6379/1"
