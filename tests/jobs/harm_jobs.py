"""Jobs that try to put more on the host than they may (tests/executor/test_host_harm.py)."""

from tasks import job

MIB = 1024 * 1024


@job(memory="128Mi", cpus=0.25, timeout=120)
def fill(path: str, mib: int) -> str:
    """Write ``mib`` MiB of zeros to ``path``."""
    block = b"\0" * MIB
    with open(path, "wb") as handle:
        for _ in range(mib):
            handle.write(block)
    return "wrote"


@job(memory="256Mi", cpus=0.25, timeout=120)
def big_value(mib: int) -> str:
    """Return a string of ``mib`` MiB, for a result larger than the job's file limit."""
    return "x" * (mib * MIB)
