"""Every ``JOBYARD_*`` variable is read in tasks.config.Settings, and only there (pure)."""

import ast
from pathlib import Path

import pytest

import tasks
from tasks.config import DEFAULT_AGENT_IMAGE, Settings
from tasks.errors import SettingsError

pytestmark = pytest.mark.pure

ROOT = Path(tasks.__file__).resolve().parent.parent
#: Where JOBYARD_* variables are read: Settings and the TLS/signing helpers it calls.
READERS = {Path("tasks/config.py"), Path("tasks/security.py")}
#: Files still to be moved onto the catalogue: none any more.
PENDING: set = set()
Mi = 1024**2


@pytest.mark.parametrize("environ, expected", [
    ({}, {"state_dir": None, "max_message": 4 * Mi, "agent_image": DEFAULT_AGENT_IMAGE,
          "flower_user": None, "flower_password": None}),
    ({"JOBYARD_STATE_DIR": "/srv/jobyard"}, {"state_dir": "/srv/jobyard"}),
    ({"JOBYARD_MAX_PAYLOAD": "1000"}, {"max_payload": 1000, "max_result": 1000, "max_message": 4000}),
    ({"JOBYARD_MAX_PAYLOAD": "1000", "JOBYARD_MAX_MESSAGE": "5000"}, {"max_message": 5000}),
    ({"JOBYARD_AGENT_IMAGE": "registry.local/agent:2"}, {"agent_image": "registry.local/agent:2"}),
    ({"JOBYARD_FLOWER_USER": "ops", "JOBYARD_FLOWER_PASSWORD": "pw"},
     {"flower_user": "ops", "flower_password": "pw"}),
    ({"JOBYARD_FLOWER_USER": "", "JOBYARD_AGENT_IMAGE": ""},
     {"flower_user": None, "agent_image": DEFAULT_AGENT_IMAGE}),
    ({}, {"broker_min_replicas": 0, "broker_wait_timeout": 1000}),
    ({"JOBYARD_BROKER_URL": "sentinel://127.0.0.1:26379"}, {"broker_min_replicas": 1}),
    ({"JOBYARD_BROKER_URL": "sentinel://127.0.0.1:26379", "JOBYARD_BROKER_MIN_REPLICAS": "0"},
     {"broker_min_replicas": 0}),
    ({"JOBYARD_BROKER_MIN_REPLICAS": "2", "JOBYARD_BROKER_WAIT_TIMEOUT": "250"},
     {"broker_min_replicas": 2, "broker_wait_timeout": 250}),
])
def test_settings_read_each_variable(environ, expected):
    settings = Settings.from_env(environ)
    for name, value in expected.items():
        if name == "state_dir" and value is None:
            assert settings.state_dir.endswith("jobyard")  # the per-user or system default
        else:
            assert getattr(settings, name) == value, name


@pytest.mark.parametrize("name, value", [
    ("JOBYARD_BROKER_MIN_REPLICAS", "one"), ("JOBYARD_BROKER_MIN_REPLICAS", "-1"),
    ("JOBYARD_BROKER_MIN_REPLICAS", "65"), ("JOBYARD_BROKER_WAIT_TIMEOUT", "0"),
    ("JOBYARD_BROKER_WAIT_TIMEOUT", "1.5"), ("JOBYARD_BROKER_WAIT_TIMEOUT", "600001"),
])
def test_a_bad_durability_setting_is_refused_by_name(name, value):
    # A WAIT timeout of 0 would block forever: refused.
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_the_flower_password_stays_out_of_the_repr():
    settings = Settings.from_env({"JOBYARD_FLOWER_USER": "ops", "JOBYARD_FLOWER_PASSWORD": "s3cret-pw"})
    assert "s3cret-pw" not in repr(settings) and "ops" in repr(settings)


def _environment_reads(tree) -> list[str]:
    """``environ.get("JOBYARD_...")``, ``environ["JOBYARD_..."]`` and ``getenv("JOBYARD_...")``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "getenv"):
            argument = node.args[0] if node.args else None
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            argument = node.slice
        else:
            continue
        if isinstance(argument, ast.Constant) and str(argument.value).startswith("JOBYARD_"):
            base = node.func.value if isinstance(node, ast.Call) else node.value
            if ast.unparse(base).split(".")[-1] in ("os", "env", "environ"):
                found.append(argument.value)
    return found


def test_jobyard_variables_are_read_only_by_settings():
    reads = {}
    for package in ("tasks", "executor", "autoscaler", "jobyard"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative not in READERS | PENDING and (found := _environment_reads(ast.parse(path.read_text()))):
                reads[str(relative)] = found
    assert reads == {}, "read JOBYARD_* variables in tasks.config.Settings"


@pytest.mark.parametrize("source, found", [
    ('os.environ.get("JOBYARD_AGENT_IMAGE")', ["JOBYARD_AGENT_IMAGE"]),
    ('os.environ["JOBYARD_STATE_DIR"]', ["JOBYARD_STATE_DIR"]),
    ('env.get("JOBYARD_FLOWER_USER")', ["JOBYARD_FLOWER_USER"]),
    ('os.getenv("JOBYARD_MAX_MESSAGE")', ["JOBYARD_MAX_MESSAGE"]),
    ('os.environ["JOBYARD_BROKER_URL"] = url', []),  # setting one for a child process is not reading
    ('spec.get("JOBYARD_X")', []),
])
def test_the_scan_finds_environment_reads(source, found):
    assert _environment_reads(ast.parse(source)) == found
