"""Every deploy recipe hands the agent its registry config as a file, never in an environment,
and the AWS agents' role may pull from ECR and nothing more (static checks, fast)."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import yaml

from .conftest import COMPOSE_FILE, DEPLOY, require_tool

pytestmark = pytest.mark.pure

AGENT_UNIT = os.path.join(DEPLOY, "systemd", "jobyard-agent.service")
TEMPLATE = os.path.join(DEPLOY, "aws", "jobyard-agents.yaml")
ECR_PULL_ACTIONS = {"ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"}
#: Anything that would carry credentials through an environment instead of a file.
CREDENTIAL_VARIABLES = re.compile(r"DOCKER_CONFIG|DOCKER_AUTH|REGISTRY_(?:PASSWORD|AUTH|USER)|ECS_ENGINE_AUTH")


def test_compose_mounts_the_registry_config_as_a_secret_file():
    with open(COMPOSE_FILE) as handle:
        text = handle.read()
    compose = yaml.safe_load(text)
    agent = compose["services"]["agent"]
    assert "registry-config" in agent["secrets"]
    assert "--registry-config /run/secrets/registry-config" in agent["command"]
    assert "JOBYARD_REGISTRY_CONFIG_SECRET:?" in compose["secrets"]["registry-config"]["file"]
    assert not CREDENTIAL_VARIABLES.search(json.dumps(agent.get("environment", {})))
    for name, service in compose["services"].items():
        if name != "agent":
            assert "registry-config" not in service.get("secrets", []), f"{name} needs no registry credentials"
    with open(os.path.join(DEPLOY, "compose.env.example")) as handle:
        assert "JOBYARD_REGISTRY_CONFIG_SECRET=/etc/jobyard/registry-config.json" in handle.read()


def test_compose_resolves_the_registry_config_secret_to_the_file_given(tmp_path):
    settings = {name: "x" for name in ("JOBYARD_REDIS_PASSWORD", "JOBYARD_FLOWER_PASSWORD", "JOBYARD_DOCKER_GID")}
    for name in ("BROKER_URL", "HOST_BROKER_URL", "REGISTRY_CONFIG"):
        (tmp_path / name).write_text("{}\n")
        settings[f"JOBYARD_{name}_SECRET"] = str(tmp_path / name)
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JOBYARD_")}
    result = subprocess.run([require_tool("docker-compose", "the Debian package docker-compose"), "-f", COMPOSE_FILE,
                             "--env-file", str(env_file), "-p", "jobyard-config-check", "config"],
                            capture_output=True, text=True, timeout=60, env=environ)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["secrets"]["registry-config"]["file"] == settings["JOBYARD_REGISTRY_CONFIG_SECRET"]
    assert "--registry-config /run/secrets/registry-config" in resolved["services"]["agent"]["command"]


def test_the_agent_unit_loads_the_registry_config_as_a_credential():
    with open(AGENT_UNIT) as handle:
        text = handle.read()
    assert "LoadCredential=registry-config:/etc/jobyard/registry-config.json" in text
    (start,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert "--registry-config %d/registry-config" in start
    assert not CREDENTIAL_VARIABLES.search(text)


@pytest.fixture(scope="module")
def template() -> dict:
    from cfnlint.decode import decode

    decoded, problems = decode(TEMPLATE)
    assert not problems, problems
    return decoded


def _agent_statements(template: dict) -> list[dict]:
    (policy,) = template["Resources"]["AgentRole"]["Properties"]["Policies"]
    statements = []
    for statement in policy["PolicyDocument"]["Statement"]:
        if "Fn::If" in statement:
            statement = statement["Fn::If"][1]
        statements.append(statement)
    return statements


def test_the_agent_role_may_pull_from_ecr_with_least_privilege(template):
    statements = {statement["Sid"]: statement for statement in _agent_statements(template)}
    token = statements["EcrToken"]
    assert token["Action"] == "ecr:GetAuthorizationToken" and token["Resource"] == "*", \
        "GetAuthorizationToken supports no resource-level permissions, and it alone gets '*'"
    pull = statements["EcrPull"]
    assert set(pull["Action"]) == ECR_PULL_ACTIONS
    assert pull["Resource"] == {"Ref": "EcrRepositoryArns"}, "pulls only from the stack's repositories"
    for statement in statements.values():
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert not any("*" in action for action in actions), statement["Sid"]
        assert statement["Resource"] != "*" or actions == ["ecr:GetAuthorizationToken"], statement["Sid"]


def test_the_user_data_writes_the_registry_config_to_a_private_file(template):
    script = template["Resources"]["AgentLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    script = script["Fn::Base64"]["Fn::Sub"]
    assert "> /etc/jobyard/registry-config.json" in script
    head = script.split("> /etc/jobyard/registry-config.json", 1)[0]
    assert "umask 077" in head, "the registry config must be written mode 0600"
    assert "${RegistryConfigParameter}" in script and "--with-decryption" in script
    assert not CREDENTIAL_VARIABLES.search(script)
