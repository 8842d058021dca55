"""A job's image on this host: pulled before admission, so a pulling job reserves nothing.

:func:`ensure_image` brings the image onto the engine through the agent's
:class:`executor.pulls.PullCoordinator` (one pull per image per engine) and, with an
``--image-cache`` budget, lets the cache evict what no job uses. :class:`executor.image_cache.ImagesInUse`
is what the caches of the engine must keep: the images of the jobs its agents hold.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tasks.errors import BackendError, ImageNotFound, ImagePullFailed, JobError

from . import job_facts
from .container import JobCall
from .placement import HandBack

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger(__name__)


def ensure_image(agent: "Agent", call: JobCall) -> None:
    """Bring the job's image onto the engine before admission: a pulling job reserves nothing.

    Its pull time is not charged to its timeout (that starts with its container).
    Sets ``call.image_digest``; a failure is the job's, recorded in its facts.
    """
    pulling: list[bool] = []

    def progress(line: str) -> None:
        log.info("job %s[%s]: %s", call.spec.name, call.task_id, line)
        job_facts.write_facts(agent, call.task_id, {"state": "pulling", "pull": line})

    def pull_started() -> None:
        # Only a job that will wait on a pull counts as pulling: one whose image is here goes
        # straight on to admission and must keep holding the intake's one spare message meanwhile.
        pulling.append(True)
        agent.placement.pull_started(call)

    try:
        call.image_digest = agent.pulls.ensure(call.spec.image, call.spec.pull, progress, on_pull=pull_started)
    except (ImagePullFailed, ImageNotFound) as exc:
        raise failed_pull(agent, call, exc)
    except BackendError as exc:
        # The engine or Redis could not be reached: the job never ran, so it goes back
        # without using an attempt, as at launch; intake pauses while the engine is down.
        agent.check_engine()
        log.warning("%s; handing %s back", exc, call.task_id)
        raise HandBack() from exc
    finally:
        if pulling:
            agent.placement.pull_ended(call.task_id)
    if pulling:
        job_facts.write_facts(agent, call.task_id, {"pull": f"pulled {call.image_digest}"})
        evict_images(agent)


def failed_pull(agent: "Agent", call: JobCall, exc: JobError) -> JobError:
    """Record a job whose image could not be had; the facts' state is a fixed kind, not ``.reason``."""
    state = "image_pull_failed" if isinstance(exc, ImagePullFailed) else exc.reason
    job_facts.write_facts(agent, call.task_id, {"name": call.spec.name, "host": agent.name, "image": call.spec.image,
                                       "state": state, "attempt": call.attempt, "queue": call.spec.queue})
    agent.notify("job_finished", call, state, None)
    return exc


def evict_images(agent: "Agent") -> None:
    if agent.image_cache is None:
        return
    try:
        for gone in agent.image_cache.evict():
            log.info("image cache: removed %s (%d bytes)", ", ".join(gone.refs), gone.size)
    except Exception as exc:  # noqa: BLE001 - a full cache must not fail the job that pulled
        log.warning("image cache eviction failed: %s", exc)
