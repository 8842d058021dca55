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
_V1_FILES = ("memory.max_usage_in_bytes",)
_V2_FILES = ("memory.peak",)


class PeakMemory:
    """Locate a process's memory cgroup once and read its high-water mark."""

    def __init__(self, pid: int):
        self.path = _memory_cgroup_file(pid) if pid else None
        self.peak: int | None = None

    def sample(self) -> int | None:
        """Read the current high-water mark; keep the largest seen."""
        if not self.path:
            return self.peak
        try:
            with open(self.path) as handle:
                value = int(handle.read().strip())
        except (OSError, ValueError):
            return self.peak
        self.peak = max(self.peak or 0, value)
        return self.peak


def _memory_cgroup_file(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return _first_existing(os.path.join(CGROUP_ROOT, "memory") + path, _V1_FILES)
    for line in lines:
        if line.startswith("0::"):
            return _first_existing(CGROUP_ROOT + line[3:], _V2_FILES)
    return None


def _first_existing(directory: str, names: tuple[str, ...]) -> str | None:
    for name in names:
        candidate = os.path.join(directory, name)
        if os.path.exists(candidate):
            return candidate
    return None
