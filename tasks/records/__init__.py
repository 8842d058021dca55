"""Typed records of jobyard's shared state in Redis, each with one writer and one parser.

Every record is a frozen dataclass: ``to_json()`` (or ``to_redis()`` for a hash) is
its only writer, ``from_json()`` (``from_redis()``) its only strict parser and
``parse()`` the tolerant one readers use (a malformed entry is skipped with a
warning). Field names and JSON layout are the wire format: byte-compatible with what
agents and readers of earlier versions write and read. Keys are in :mod:`tasks.keys`.
"""

from .agent import AgentState, HeldJob, worker_name
from .base import HashRecord, Record
from .job import DeadLetter, JobFacts
from .messages import Decision, RejectedMessage
from .resources import CPU_EPSILON, HostOffer, Resources

__all__ = ["AgentState", "CPU_EPSILON", "DeadLetter", "Decision", "HashRecord", "HeldJob", "HostOffer",
           "JobFacts", "Record", "RejectedMessage", "Resources", "worker_name"]
