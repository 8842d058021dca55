"""The AWS provider against moto's Auto Scaling and EC2 (no real AWS)."""

import boto3
import pytest

from moto import mock_aws

from autoscaler.errors import ProviderError
from autoscaler.providers.aws import AwsProvider
from autoscaler.shape import HostShape

REGION = "eu-west-1"
GROUP = "jobyard-agents"


@pytest.fixture
def group(monkeypatch):
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", REGION)):
        monkeypatch.setenv(name, value)
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        ec2 = session.client("ec2")
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        ec2.create_launch_template(LaunchTemplateName="agent",
                                   LaunchTemplateData={"ImageId": image, "InstanceType": "t3.medium"})
        autoscaling = session.client("autoscaling")
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=GROUP, LaunchTemplate={"LaunchTemplateName": "agent"}, MinSize=0, MaxSize=3,
            DesiredCapacity=0, AvailabilityZones=[f"{REGION}a"])
        yield AwsProvider(HostShape(2.0, 4 * 1024**3), GROUP, session=session), autoscaling


def _group(autoscaling):
    return autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"][0]


def test_scale_out_sets_desired_capacity(group):
    provider, autoscaling = group
    assert provider.hosts() == []
    provider.add(2)
    assert _group(autoscaling)["DesiredCapacity"] == 2
    hosts = provider.hosts()
    assert len(hosts) == 2 and all(h.name.startswith("i-") for h in hosts)
    provider.add(5)
    assert _group(autoscaling)["DesiredCapacity"] == 3, "went past the group's MaxSize"


def test_scale_in_terminates_exactly_the_drained_instance(group):
    provider, autoscaling = group
    provider.add(3)
    names = sorted(h.name for h in provider.hosts())
    drained, kept = names[1], {names[0], names[2]}
    provider.protect(kept)
    protected = {i["InstanceId"]: i["ProtectedFromScaleIn"] for i in _group(autoscaling)["Instances"]}
    assert protected == {names[0]: True, names[1]: False, names[2]: True}

    provider.remove(drained)
    assert _group(autoscaling)["DesiredCapacity"] == 2
    assert {h.name for h in provider.hosts()} == kept
    provider.protect(set())
    assert not any(i["ProtectedFromScaleIn"] for i in _group(autoscaling)["Instances"])


def test_errors_are_provider_errors(group):
    provider, _ = group
    with pytest.raises(ProviderError, match="no-such-group"):
        AwsProvider(provider.shape, "no-such-group", session=boto3.Session(region_name=REGION)).hosts()
