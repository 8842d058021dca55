"""``jobyard image build --requirements --push``: a team image with a real PyPI wheel.

One image is built through the CLI, pushed to our loopback registry, removed locally
and pulled back through ``executor.pull``; every test below runs it the way the agent
does (uid 10001, read-only root, no network) and removes what it created.
"""

from __future__ import annotations

import base64
import glob
import io
import json
import marshal
import os
import re
import shutil
import subprocess
import tarfile
import urllib.request

import pytest
from click.testing import CliRunner
from docker.types import Mount

from executor.errors import ImageBuildError
from executor.bytecode import compile_bytecode
from executor.pull import pull_image
from executor.push import push_image
from executor.rootfs import Tree
from jobyard.cli import main
from tests.conftest import ROOT, SESSION
from tests.support.services import free_port, temp_dir

TAG = os.environ.get("JOBYARD_TEST_IMAGE_TAG", "latest")
#: A real wheel from PyPI with a compiled extension, pinned so the build is repeatable.
REQUIREMENT = "msgpack==1.1.2"
JOB_MODULE = '''\
import msgpack
from msgpack import _cmsgpack  # the compiled extension, not msgpack's pure fallback


def roundtrip(value):
    """Pack and unpack ``value`` with the C extension."""
    return {"value": msgpack.unpackb(_cmsgpack.Packer().pack(value)), "version": list(msgpack.version)}
'''
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json, "
                  "application/vnd.oci.image.manifest.v1+json")
PINNED = re.compile(r"^(\S+)@(sha256:[0-9a-f]{64})$", re.MULTILINE)


def _config(path: str, host: str, username: str, password: str) -> str:
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    with open(path, "w") as handle:
        json.dump({"auths": {host: {"auth": auth}}}, handle)
    return path


def _registry_digest(registry, repository: str, tag: str) -> str:
    credentials = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    request = urllib.request.Request(f"http://{registry.host}/v2/{repository}/manifests/{tag}", method="HEAD",
                                     headers={"Accept": MANIFEST_TYPES, "Authorization": f"Basic {credentials}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Docker-Content-Digest"]


def _build(*args: str):
    return CliRunner().invoke(main, ["image", "build", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def workdir():
    return temp_dir("jobyard-build-test-")


@pytest.fixture(scope="module")
def team_image(registry, docker_client, workdir):
    """The team image: built with --requirements, pushed, untagged, pulled back by digest."""
    code = os.path.join(workdir, "code")
    os.makedirs(code)
    with open(os.path.join(code, "teamjob.py"), "w") as handle:
        handle.write(JOB_MODULE)
    requirements = os.path.join(workdir, "requirements.txt")
    with open(requirements, "w") as handle:
        handle.write(f"# the team's dependencies\n{REQUIREMENT}\n")
    config = _config(os.path.join(workdir, "config.json"), registry.host, registry.username, registry.password)
    reference = f"{registry.host}/team/deps:{TAG}"
    result = _build("--code", code, "--requirements", requirements, "--tag", reference, "--push",
                    "--registry-config", config)
    assert result.exit_code == 0, result.output
    found = PINNED.findall(result.output)
    assert found, result.output
    registry.untag(docker_client, reference)
    yield {"reference": reference, "pinned": found[-1], "output": result.output}
    registry.untag(docker_client, reference)
    registry.untag(docker_client, f"{found[-1][0]}@{found[-1][1]}")


@pytest.fixture(scope="module")
def pulled(team_image, registry, docker_client):
    """The team image back on the engine through executor.pull, and the digest it pulled."""
    import docker.errors

    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(team_image["reference"])
    digest = pull_image(docker_client, team_image["reference"], registry.auth_config, timeout=120)
    return team_image["reference"], digest


def _run(client, image: str, command: list[str], mounts=()) -> tuple[int, str, list[dict]]:
    """Run ``command`` hardened as the agent runs jobs; (exit code, output, filesystem changes)."""
    container = client.containers.create(
        image, command, user="10001:10001", read_only=True, network_mode="none", cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"], tmpfs={"/tmp": "rw,nosuid,nodev,size=16m"},
        working_dir="/tmp", mounts=list(mounts), labels={"jobyard.agent": f"{SESSION}-build"})
    try:
        container.start()
        status = container.wait(timeout=120)["StatusCode"]
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
        changes = client.api.diff(container.id) or []
    finally:
        container.remove(force=True)
    return status, output, changes


def test_push_prints_the_digest_the_registry_holds(team_image, pulled, registry):
    name, digest = team_image["pinned"]
    assert name == f"{registry.host}/team/deps"
    assert digest == _registry_digest(registry, "team/deps", TAG)
    assert pulled[1] == digest
    output = team_image["output"]
    for step in ("pip: ", "compiling bytecode", "building ", "pushing "):
        assert step in output, output
    assert registry.password not in output


def test_job_imports_its_dependency_from_bytecode_on_a_read_only_root(pulled, docker_client):
    modules = "json, runpy, importlib, traceback, types, msgpack, msgpack._cmsgpack, teamjob"
    script = (f"import {modules}, importlib.util\n"
              "print('FLAGS', [int.from_bytes(open(importlib.util.cache_from_source(m.__file__), 'rb').read(8)[4:],"
              " 'little') for m in (json, msgpack, teamjob)])\n"
              "print('ROUNDTRIP', teamjob.roundtrip({'a': [1, 2]}))\n")
    status, output, changes = _run(docker_client, pulled[0], ["python3", "-v", "-c", script])
    assert status == 0, output[-3000:]
    assert "ROUNDTRIP {'value': {'a': [1, 2]}, 'version': [1, 1, 2]}" in output
    # Hash-based, so valid whatever the files' mtimes: 0b01 unchecked (stdlib), 0b11 checked.
    assert "FLAGS [1, 3, 3]" in output
    for pyc in ("/usr/local/lib/python3.11/json/__pycache__/__init__.cpython-311.pyc",
                "/app/deps/msgpack/__pycache__/__init__.cpython-311.pyc",
                "/app/code/__pycache__/teamjob.cpython-311.pyc"):
        assert f"# code object from '{pyc}'" in output, pyc
    compiled_from_source = re.findall(r"^# code object from (/\S+\.py)$", output, re.MULTILINE)
    assert compiled_from_source == []
    assert "could not create" not in output
    assert not [change for change in changes if change["Path"].endswith(".pyc")], changes


def test_an_image_built_from_it_with_a_changed_module_runs_the_new_source(pulled, docker_client):
    changed = b"def roundtrip(value):\n    return 'changed'\n"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", f"FROM {pulled[0]}\nCOPY teamjob.py /app/code/\n".encode()),
                           ("teamjob.py", changed)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    derived = f"jobyard-test/derived:{TAG}"
    docker_client.images.build(fileobj=context, custom_context=True, tag=derived, rm=True, forcerm=True)
    try:
        status, output, _ = _run(docker_client, derived, ["python3", "-c", "import teamjob; print(teamjob.roundtrip(1))"])
    finally:
        docker_client.images.remove(derived)
    assert (status, output.strip()) == (0, "changed")


def test_the_runner_runs_the_team_job_with_the_images_own_python(pulled, docker_client, workdir):
    job = os.path.join(workdir, "job")
    for part in ("in", "out", "runner"):
        os.makedirs(os.path.join(job, part), mode=0o755)
    os.chmod(os.path.join(job, "out"), 0o777)
    shutil.copyfile(os.path.join(ROOT, "executor", "runner.py"), os.path.join(job, "runner", "runner.py"))
    with open(os.path.join(job, "in", "call.json"), "w") as handle:
        json.dump({"entry": "teamjob:roundtrip", "args": [[1, "two", None]], "kwargs": {}}, handle)
    result_path = os.path.join(job, "out", "result.json")
    open(result_path, "w").close()
    os.chmod(result_path, 0o666)
    mounts = [Mount("/jobyard/in", os.path.join(job, "in"), type="bind", read_only=True),
              Mount("/jobyard/out", os.path.join(job, "out"), type="bind"),
              Mount("/jobyard/runner", os.path.join(job, "runner"), type="bind", read_only=True)]
    status, output, _ = _run(docker_client, pulled[0], ["python3", "/jobyard/runner/runner.py"], mounts)
    assert status == 0, output[-3000:]
    with open(result_path) as handle:
        result = json.load(handle)
    assert result["ok"] and result["value"] == {"value": [1, "two", None], "version": [1, 1, 2]}


def _installed_python(version: str) -> str | None:
    """A real python``version`` binary (pyenv's shims only pick the global version)."""
    found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    on_path = shutil.which(f"python{version}")
    if on_path and "/shims/" not in on_path:
        found.append(on_path)
    return found[0] if found else None


#: The oldest Python the runner supports (f-strings), and one in between.
OLD_PYTHONS = ("3.6", "3.9")


@pytest.mark.pure
@pytest.mark.parametrize("version", OLD_PYTHONS)
def test_the_runner_runs_under_old_pythons(version, tmp_path):
    python = _installed_python(version)
    if python is None:
        pytest.skip(f"python{version} is not installed here")
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "result.json").touch()
    (tmp_path / "in" / "call.json").write_text(json.dumps({"entry": "json:dumps", "args": [[1, "x"]]}))
    # The runner's paths are the container's; point them at tmp_path and call main().
    script = ("import sys; namespace = {'__name__': 'runner'}\n"
              "exec(compile(open(sys.argv[1]).read(), sys.argv[1], 'exec'), namespace)\n"
              "namespace['IN_PATH'] = sys.argv[2] + '/in/call.json'\n"
              "namespace['OUT_PATH'] = sys.argv[2] + '/out/result.json'\n"
              "sys.exit(namespace['main']())\n")
    done = subprocess.run([python, "-I", "-c", script, os.path.join(ROOT, "executor", "runner.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["ok"] and result["value"] == '[1, "x"]'


_CODEC_CHECK = r"""
import sys
before = set(sys.modules)  # a site hook of the interpreter's own may have imported re already
namespace = {"__name__": "runner"}
exec(compile(open(sys.argv[1]).read(), sys.argv[1], "exec"), namespace)
assert not {"json", "re"} & (set(sys.modules) - before), "the runner imported json or re"
loads, dumps = namespace["_loads"], namespace["_dumps"]
import json, math
values = [None, True, 0, -7, 2 ** 70, 1.5, 1e-300, float("inf"), "", "caf\u00e9 \u2603 \"q\" \\n", [1, [2, {}]],
          {"a": [1.25, None], "b": {"c": "d"}, 3: "int key", None: 0}, list(range(50))]
for value in values:
    assert dumps(value) == json.dumps(value), (value, dumps(value))
    assert loads(dumps(value)) == json.loads(json.dumps(value))
assert math.isnan(loads(dumps(float("nan"))))
assert loads(' \n {"x": [1, 2.5e3, "\\u00e9"]} \n') == {"x": [1, 2500.0, "\u00e9"]}
for bad in ({1, 2}, object(), {(1, 2): 3}):
    try:
        dumps(bad)
    except TypeError as exc:
        try:
            json.dumps(bad)
        except TypeError as expected:
            assert str(exc) == str(expected).replace("'", ""), (str(exc), str(expected))  # 3.6 quoted the type
    else:
        raise AssertionError("encoded %r" % (bad,))
circular = []
circular.append(circular)
for call in (lambda: dumps(circular), lambda: loads("[1] 2"), lambda: loads("")):
    try:
        call()
    except ValueError:
        pass
    else:
        raise AssertionError("no ValueError")
assert dumps([1]) == "[1]"  # an encoder that failed leaves no markers behind
"""


@pytest.mark.pure
@pytest.mark.parametrize("version", (*OLD_PYTHONS, "3.11", "3.12", "3.13"))
def test_the_runner_encodes_as_json_does_without_importing_it(version):
    python = _installed_python(version)
    if python is None:
        pytest.skip(f"python{version} is not installed here")
    done = subprocess.run([python, "-I", "-c", _CODEC_CHECK, os.path.join(ROOT, "executor", "runner.py")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.pure
def test_a_cached_pyc_is_reused_only_while_its_source_hash_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "src").mkdir()
    module = tmp_path / "src" / "mod.py"
    tree = Tree(str(tmp_path / "src"), "/app/code", shared_cache=True)
    seen: list[str] = []
    for text in ("X = 1\n", "X = 1\n", "X = 2\n"):
        module.write_text(text)
        [(pyc, target)] = compile_bytecode([tree], str(tmp_path / "work"), seen.append)
        assert target == "/app/code/__pycache__/mod.cpython-311.pyc"
        namespace: dict = {}
        exec(marshal.loads(open(pyc, "rb").read()[16:]), namespace)
        assert namespace["X"] == int(text[4])
    assert [line.split(",")[0] for line in seen] == ["compiled 1 modules", "compiled 0 modules", "compiled 1 modules"]


def test_missing_or_empty_requirements_are_clear_errors(workdir):
    missing = os.path.join(workdir, "no-such-requirements.txt")
    result = _build("--requirements", missing, "--tag", f"jobyard-test/never:{TAG}")
    assert result.exit_code == 1
    assert f"--requirements {missing!r} is not a file" in result.output
    empty = os.path.join(workdir, "empty.txt")
    with open(empty, "w") as handle:
        handle.write("# nothing yet\n\n")
    result = _build("--requirements", empty, "--tag", f"jobyard-test/never:{TAG}")
    assert result.exit_code == 1
    assert "names no packages" in result.output


def test_an_unknown_package_shows_pips_error(workdir):
    wheels = os.path.join(workdir, "no-wheels")
    os.makedirs(wheels, exist_ok=True)
    requirements = os.path.join(workdir, "unknown.txt")
    with open(requirements, "w") as handle:
        # No index: pip answers from an empty local directory, asking no registry.
        handle.write(f"--no-index\n--find-links {wheels}\njobyard-no-such-package\n")
    result = _build("--requirements", requirements, "--tag", f"jobyard-test/never:{TAG}")
    assert result.exit_code == 1
    assert "pip could not install the requirements" in result.output
    assert "No matching distribution found for jobyard-no-such-package" in result.output


def test_push_with_wrong_credentials_is_an_auth_error_without_the_secret(registry, docker_client, workdir):
    wrong = "wrong-" + registry.password
    config = _config(os.path.join(workdir, "wrong.json"), registry.host, registry.username, wrong)
    reference = f"{registry.host}/team/denied:{TAG}"
    try:
        result = _build("--tag", reference, "--push", "--registry-config", config)
    finally:
        registry.untag(docker_client, reference)
    assert result.exit_code == 1
    assert f"push of {reference} to registry {registry.host} failed (auth)" in result.output
    assert wrong not in result.output and registry.password not in result.output


def test_push_failures_name_the_registry_and_reason(registry, docker_client, busybox_image):
    wrong = {"username": registry.username, "password": "wrong-" + registry.password}
    gone = f"127.0.0.1:{free_port()}"
    for host, auth_config, reason in ((registry.host, wrong, "auth"), (gone, registry.auth_config, "unreachable")):
        reference = f"{host}/team/direct:{TAG}"
        docker_client.api.tag(busybox_image, f"{host}/team/direct", TAG)
        try:
            with pytest.raises(ImageBuildError) as caught:
                push_image(docker_client, reference, auth_config)
        finally:
            docker_client.api.remove_image(reference)
        assert f"push of {reference} to registry {host} failed ({reason})" in str(caught.value)
        assert registry.password not in str(caught.value)


def test_bad_push_options_fail_before_any_build(registry, workdir):
    result = _build("--tag", f"jobyard-test/never:{TAG}", "--registry-config", os.path.join(workdir, "x.json"))
    assert result.exit_code == 2 and "--registry-config is used only with --push" in result.output
    pinned = f"{registry.host}/team/deps@sha256:{'0' * 64}"
    result = _build("--tag", pinned, "--push")
    assert result.exit_code == 1 and "a tag, not a digest" in result.output
    result = _build("--tag", f"{registry.host}/team/deps:v1", "--push", "--registry-config",
                    os.path.join(workdir, "no-such-config.json"))
    assert result.exit_code == 1 and "cannot read the registry config" in result.output
