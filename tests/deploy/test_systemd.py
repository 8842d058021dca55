"""deploy/systemd/ checked by systemd's own tools: ``systemd-analyze verify`` and the
offline ``systemd-analyze security`` exposure score.

The units run /opt/jobyard/bin/jobyard, which does not exist on a test machine, and
verify rightly rejects a unit whose command is missing; so each unit is rendered into
a temporary directory with that one path replaced by this virtualenv's ``jobyard``.
Everything else is checked as shipped. verify reports mistakes (unknown keys, bad
values) as warnings with exit status 0, so any line about our units fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import DEPLOY, require_tool

UNITS_DIR = os.path.join(DEPLOY, "systemd")
UNITS = ("jobyard-agent.service", "jobyard-autoscaler.service", "jobyard-flower.service")
INSTALLED_COMMAND = "/opt/jobyard/bin/jobyard"
#: Highest overall exposure (systemd-analyze security, 0-100 scale) a unit may have.
MAX_EXPOSURE = 20
HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
             "RestrictAddressFamilies=", "CapabilityBoundingSet=\n", "Restart=on-failure",
             "EnvironmentFile=/etc/jobyard/jobyard.env")


def render(tmp_path, name: str, edit=lambda text: text) -> str:
    """Write unit ``name`` into ``tmp_path`` with this virtualenv's jobyard as its command."""
    with open(os.path.join(UNITS_DIR, name)) as handle:
        text = handle.read()
    assert INSTALLED_COMMAND in text
    command = os.path.join(os.path.dirname(sys.executable), "jobyard")
    assert os.access(command, os.X_OK), f"{command} is missing: pip install -e . into this virtualenv"
    path = tmp_path / name
    path.write_text(edit(text.replace(INSTALLED_COMMAND, command)))
    return str(path)


def verify(*paths: str) -> list[str]:
    """What ``systemd-analyze verify`` says about these units (nothing when they are right)."""
    tool = require_tool("systemd-analyze", "the Debian package systemd")
    result = subprocess.run([tool, "verify", "--man=no", *paths], capture_output=True, text=True, timeout=120)
    names = [os.path.basename(path) for path in paths]
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if any(name in line for name in names)]
    if result.returncode != 0:
        complaints.append(f"exit status {result.returncode}: {result.stderr.strip()}")
    return complaints


def test_units_pass_systemd_analyze_verify(tmp_path):
    paths = [render(tmp_path, name) for name in UNITS]
    assert verify(*paths) == []


@pytest.mark.parametrize("name", UNITS)
def test_units_are_hardened(tmp_path, name):
    with open(os.path.join(UNITS_DIR, name)) as handle:
        text = handle.read()
    missing = [option for option in HARDENING if option not in text]
    assert not missing, f"{name} lacks {missing}"
    tool = require_tool("systemd-analyze", "the Debian package systemd")
    result = subprocess.run([tool, "security", "--offline=true", f"--threshold={MAX_EXPOSURE}",
                             render(tmp_path, name)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{name} is too exposed:\n{result.stdout[-1500:]}{result.stderr[-500:]}"


@pytest.mark.parametrize("mistake, edit", [
    ("a misspelled hardening option", lambda text: text.replace("ProtectSystem=", "ProtectSystm=")),
    ("an unknown address family", lambda text: text.replace("AF_UNIX", "AF_BOGUS")),
    ("a command that does not exist", lambda text: text.replace("/jobyard agent", "/jobyard-missing agent")),
])
def test_verify_catches_a_broken_unit(tmp_path, mistake, edit):
    assert verify(render(tmp_path, "jobyard-agent.service", edit)), f"verify missed {mistake}"


def test_the_agent_may_use_docker_and_its_state_dir():
    with open(os.path.join(UNITS_DIR, "jobyard-agent.service")) as handle:
        text = handle.read()
    assert "SupplementaryGroups=docker" in text and "StateDirectory=jobyard" in text
    assert "--state-dir /var/lib/jobyard" in text
    assert "UMask=0022" in text, "job input files must be readable by the job's uid"


@pytest.mark.parametrize("name", UNITS)
def test_units_get_the_broker_url_as_a_credential_not_in_their_environment(name):
    with open(os.path.join(UNITS_DIR, name)) as handle:
        text = handle.read()
    assert "LoadCredential=broker-url:/etc/jobyard/broker-url" in text
    assert "Environment=JOBYARD_BROKER_URL_FILE=%d/broker-url" in text
    with open(os.path.join(UNITS_DIR, "jobyard.env.example")) as handle:
        settings = [line.split("=", 1)[0] for line in handle if line.strip() and not line.startswith("#")]
    assert "JOBYARD_BROKER_URL" not in settings, "the broker URL must not be in the units' environment file"
