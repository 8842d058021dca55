"""The jobs ``jobyard demo`` runs. Baked into the demo image as ``jobyard.demo_jobs``."""

from tasks import job

DEMO_IMAGE = "jobyard/demo:latest"


@job(image=DEMO_IMAGE, cpus=0.5, memory="96Mi", timeout=60)
def count_primes(limit):
    """Count primes below ``limit`` (a little honest CPU work)."""
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\x00\x00"
    for number in range(2, int(limit ** 0.5) + 1):
        if sieve[number]:
            sieve[number * number::number] = bytearray(len(range(number * number, limit, number)))
    return sum(sieve)


@job(image=DEMO_IMAGE, cpus=0.5, memory="64Mi", timeout=60)
def load_everything(megabytes):
    """The monolith's killer: loads far more than its limit allows."""
    blocks = [bytearray(1024 * 1024) for _ in range(megabytes)]
    return len(blocks)
