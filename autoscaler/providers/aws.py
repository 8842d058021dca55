"""Hosts as instances of an EC2 Auto Scaling group (boto3).

Scale-out raises the group's desired capacity; scale-in terminates exactly the
drained instance with ``ShouldDecrementDesiredCapacity=True``, so the group never
picks a victim of its own. Busy instances carry scale-in protection, so neither a
manual change of desired capacity nor a scaling policy can kill their jobs.
An instance's agent must run with ``--hostname <instance id>``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import ConfigError, ProviderError
from ..shape import HostShape
from . import Host, HostProvider, host_shape

if TYPE_CHECKING:
    from ..run import AutoscaleConfig

#: Lifecycle states of instances that are, or are becoming, hosts.
LIVE_STATES = ("Pending", "Pending:Wait", "Pending:Proceed", "InService")
PENDING = "pending-"


def from_config(config: AutoscaleConfig) -> AwsProvider:
    """The provider ``jobyard autoscale --provider aws`` asks for."""
    if not config.asg_name:
        raise ConfigError("--asg-name is required for --provider aws")
    return AwsProvider(host_shape(config), config.asg_name, region=config.region)


class AwsProvider(HostProvider):
    """One Auto Scaling group whose instances all have :attr:`shape`."""

    def __init__(self, shape: HostShape, group: str, region: str | None = None, session: boto3.Session | None = None):
        self.shape = shape
        self.group = group
        session = session or boto3.Session(region_name=region)
        self.autoscaling = session.client("autoscaling")
        self.ec2 = session.client("ec2")
        self._asked_at = time.time()

    def hosts(self) -> list[Host]:
        """Live instances, plus a placeholder per unit of desired capacity not yet launched."""
        group = self._group()
        instances = [i for i in group["Instances"] if i["LifecycleState"] in LIVE_STATES]
        launched = self._launch_times([i["InstanceId"] for i in instances])
        hosts = [Host(i["InstanceId"], launched.get(i["InstanceId"], self._asked_at), i["InstanceId"])
                 for i in instances]
        missing = group["DesiredCapacity"] - len(instances)
        return hosts + [Host(f"{PENDING}{n}", self._asked_at) for n in range(max(0, missing))]

    def add(self, count: int) -> list[Host]:
        """Raise desired capacity by ``count`` (within the group's MaxSize)."""
        group = self._group()
        desired = min(group["DesiredCapacity"] + count, group["MaxSize"])
        self._call(self.autoscaling.set_desired_capacity, AutoScalingGroupName=self.group,
                   DesiredCapacity=desired, HonorCooldown=False)
        self._asked_at = time.time()
        return [Host(f"{PENDING}{n}", self._asked_at) for n in range(desired - group["DesiredCapacity"])]

    def remove(self, name: str) -> None:
        """Terminate instance ``name`` and decrement desired capacity with it."""
        if name.startswith(PENDING):
            group = self._group()
            self._call(self.autoscaling.set_desired_capacity, AutoScalingGroupName=self.group,
                       DesiredCapacity=max(group["DesiredCapacity"] - 1, group["MinSize"]), HonorCooldown=False)
            return
        self._call(self.autoscaling.set_instance_protection, AutoScalingGroupName=self.group,
                   InstanceIds=[name], ProtectedFromScaleIn=False)
        self._call(self.autoscaling.terminate_instance_in_auto_scaling_group, InstanceId=name,
                   ShouldDecrementDesiredCapacity=True)

    def protect(self, busy: set[str]) -> None:
        """Scale-in protection on exactly the ``busy`` instances."""
        for instance in self._group()["Instances"]:
            wanted = instance["InstanceId"] in busy
            if instance["LifecycleState"] == "InService" and instance.get("ProtectedFromScaleIn") != wanted:
                self._call(self.autoscaling.set_instance_protection, AutoScalingGroupName=self.group,
                           InstanceIds=[instance["InstanceId"]], ProtectedFromScaleIn=wanted)

    def _group(self) -> dict:
        groups = self._call(self.autoscaling.describe_auto_scaling_groups,
                            AutoScalingGroupNames=[self.group])["AutoScalingGroups"]
        if not groups:
            raise ProviderError(f"no Auto Scaling group named {self.group!r}")
        return groups[0]

    def _launch_times(self, ids: list[str]) -> dict[str, float]:
        if not ids:
            return {}
        reply = self._call(self.ec2.describe_instances, InstanceIds=ids)
        return {i["InstanceId"]: i["LaunchTime"].timestamp() for r in reply["Reservations"] for i in r["Instances"]}

    def _call(self, method, **params):
        try:
            return method(**params)
        except (ClientError, BotoCoreError) as exc:
            raise ProviderError(f"AWS {method.__name__} failed for group {self.group!r}: {exc}") from exc
