"""Reading a container's peak memory from its cgroup, when this host can see it.

cgroup v1 keeps a high-water mark (``memory.max_usage_in_bytes``); cgroup v2 has
``memory.peak`` on newer kernels. The agent samples it while the job runs, because
the cgroup disappears with the container. Where the files are not visible (agent
in a container without /sys/fs/cgroup, remote engine), this reports nothing and the
runner's own reading is used.
"""

from __future__ import annotations

import os

CGROUP_ROOT = "/sys/fs/cgroup"


class PeakMemory:
    """Find a container's memory cgroup by its id and read its high-water mark."""

    def __init__(self, container_id: str):
        self.container_id = container_id
        self.path: str | None = None
        self.peak: int | None = None
        self._looked = False

    def sample(self) -> int | None:
        """Read the current high-water mark; keep the largest seen."""
        if not self._looked:
            self._looked = True
            self.path = _first_existing(_candidates(self.container_id))
        if not self.path:
            return self.peak
        try:
            with open(self.path) as handle:
                value = int(handle.read().strip())
        except (OSError, ValueError):
            return self.peak
        self.peak = max(self.peak or 0, value)
        return self.peak


def _candidates(container_id: str) -> list[str]:
    """Where Docker puts a container's memory cgroup (cgroupfs or systemd driver, v1 or v2)."""
    scope = f"docker-{container_id}.scope"
    return [
        f"{CGROUP_ROOT}/memory/docker/{container_id}/memory.max_usage_in_bytes",
        f"{CGROUP_ROOT}/memory/system.slice/{scope}/memory.max_usage_in_bytes",
        f"{CGROUP_ROOT}/system.slice/{scope}/memory.peak",
        f"{CGROUP_ROOT}/docker/{container_id}/memory.peak",
    ]


def _first_existing(paths: list[str]) -> str | None:
    return next((path for path in paths if os.path.exists(path)), None)
