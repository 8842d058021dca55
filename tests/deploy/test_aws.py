"""deploy/aws/ checked offline: cfn-lint on the CloudFormation template, then the
properties cfn-lint cannot know we want: least privilege, no literal secret, IMDSv2,
and user-data that parses and installs the shipped agent unit.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from .conftest import DEPLOY, require_tool

TEMPLATE = os.path.join(DEPLOY, "aws", "jobyard-agents.yaml")
AGENT_UNIT = os.path.join(DEPLOY, "systemd", "jobyard-agent.service")
GROUP_ARN = ("arn:${AWS::Partition}:autoscaling:${AWS::Region}:${AWS::AccountId}:autoScalingGroup:*:"
             "autoScalingGroupName/${AWS::StackName}-agents")
SCALING_ACTIONS = {"autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup",
                   "autoscaling:SetInstanceProtection"}
#: What the user-data's ${...} placeholders become for the syntax check.
SAMPLE_PARAMETERS = {"JobyardPackage": "jobyard==0.1.0", "JobImagesObject": "bucket/images.tar",
                     "AWS::Region": "eu-west-1", "BrokerUrlParameter": "/jobyard/broker-url",
                     "AgentArgs": "--queues default", "RegistryConfigParameter": "/jobyard/registry-config"}


def cfn_lint(path: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("cfn-lint", "the pip package cfn-lint"), path],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def template() -> dict:
    from cfnlint.decode import decode

    decoded, problems = decode(TEMPLATE)
    assert not problems, problems
    return decoded


def user_data(template: dict) -> str:
    data = template["Resources"]["AgentLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    return data["Fn::Base64"]["Fn::Sub"]


def test_template_passes_cfn_lint():
    result = cfn_lint(TEMPLATE)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("mistake, old, new", [
    ("an invalid IMDS setting", "HttpTokens: required", "HttpTokens: always"),
    ("a misspelled property", "VPCZoneIdentifier:", "VpcZoneIdentifier:"),
    ("a reference to nothing", "!Ref AgentLaunchTemplate", "!Ref AgentTemplate"),
])
def test_cfn_lint_catches_a_broken_template(tmp_path, mistake, old, new):
    with open(TEMPLATE) as handle:
        text = handle.read()
    assert old in text
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace(old, new, 1))
    assert cfn_lint(str(broken)).returncode != 0, f"cfn-lint missed {mistake}"


def test_the_autoscaler_may_scale_only_its_own_group(template):
    statements = template["Resources"]["AutoscalerPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert statement["Effect"] == "Allow"
        assert not any("*" in action for action in actions), f"wildcard action in {statement['Sid']}"
        if statement["Resource"] == "*":
            assert all(action.split(":")[1].startswith("Describe") for action in actions), statement["Sid"]
    (scaling,) = [s for s in statements if SCALING_ACTIONS & set(s["Action"])]
    assert set(scaling["Action"]) == SCALING_ACTIONS
    assert scaling["Resource"] == {"Fn::Sub": GROUP_ARN}
    assert scaling["Condition"] == {"StringEquals": {"autoscaling:ResourceTag/jobyard:fleet": {"Ref": "AWS::StackName"}}}
    group = template["Resources"]["AgentGroup"]["Properties"]
    assert group["AutoScalingGroupName"] == {"Fn::Sub": "${AWS::StackName}-agents"}
    assert {"Key": "jobyard:fleet", "Value": {"Ref": "AWS::StackName"}, "PropagateAtLaunch": True} in group["Tags"]
    assert "DesiredCapacity" not in group, "the autoscaler owns the desired capacity"


def test_no_secret_is_a_literal_and_instances_use_imdsv2(template):
    resources = json.dumps(template["Resources"])
    assert not re.search(r"rediss?://", resources), "the broker URL must come from SSM at boot"
    script = user_data(template)
    assert "--with-decryption" in script and "${BrokerUrlParameter}" in script
    assert not re.search(r"^\s*set\s+-\w*x", script, re.MULTILINE), "tracing would log the broker URL"
    data = template["Resources"]["AgentLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert all(mapping["Ebs"]["Encrypted"] for mapping in data["BlockDeviceMappings"])


def test_user_data_parses_and_installs_the_shipped_agent_unit(template, tmp_path):
    script = user_data(template)
    unit = script.split("<<'UNIT'\n", 1)[1].split("\nUNIT\n", 1)[0] + "\n"
    with open(AGENT_UNIT) as handle:
        assert unit == handle.read(), "the user-data's unit differs from deploy/systemd/jobyard-agent.service"
    rendered = re.sub(r"\$\{([A-Za-z:]+)\}", lambda match: SAMPLE_PARAMETERS[match.group(1)], script)
    path = tmp_path / "user-data.sh"
    path.write_text(rendered)
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "--hostname %s" in script and "instance-id" in script, "agents are named by instance id"
    assert "systemctl enable --now jobyard-agent.service" in script


def test_the_broker_url_goes_to_a_private_file_not_the_environment_file(template):
    script = user_data(template)
    assert "> /etc/jobyard/broker-url" in script and "umask 077" in script
    assert "JOBYARD_BROKER_URL=" not in script, "the broker URL must not be in /etc/jobyard/jobyard.env"
