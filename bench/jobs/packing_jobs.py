"""The job bench/packing.py runs: hold some memory for a while, mostly sleeping.

Baked into the bench's image (``build_image(code=bench/jobs)``), so it is imported
as ``packing_jobs`` both by the bench and inside the container.
"""

import os
import time

from tasks import job

PAGE = 4096


@job(memory="64Mi", cpus=0.25, timeout=120)
def hold(seconds: float, touch_bytes: int) -> dict:
    """Write to ``touch_bytes`` of fresh memory, then sleep until ``seconds`` have passed.

    One byte per page is enough to make every page resident, so the memory the
    cgroup counts is real. The sleep absorbs the time the writing took, so the run
    time inside the container stays close to ``seconds``. Returns the bytes held,
    the seconds the writing took and how old the process was when the job began
    (interpreter and runner start-up inside the container).
    """
    started = time.monotonic()
    startup = process_age()
    held = bytearray(touch_bytes)
    held[::PAGE] = b"\x01" * len(range(0, touch_bytes, PAGE))
    touched = time.monotonic() - started
    time.sleep(max(0.0, seconds - touched))
    return {"bytes": len(held), "touch": touched, "startup": startup}


def process_age() -> float:
    """Seconds since this process started (from /proc), or -1 where unreadable."""
    try:
        with open("/proc/self/stat") as handle:
            ticks = int(handle.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0
    return uptime - ticks / os.sysconf("SC_CLK_TCK")
