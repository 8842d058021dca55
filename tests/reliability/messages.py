"""Raw messages in kombu's Redis format, for pushing straight into a queue."""

from __future__ import annotations

import base64
import json
import uuid

from tests.conftest import BUSYBOX_IMAGE


def envelope(body: bytes, headers: dict | None, content_type: str = "application/json", queue: str = "default",
             tag: str | None = None) -> bytes:
    """A kombu Redis transport envelope around ``body``, as bytes for LPUSH."""
    return json.dumps({
        "body": base64.b64encode(body).decode(), "content-encoding": "utf-8", "content-type": content_type,
        "headers": headers or {},
        "properties": {"body_encoding": "base64", "delivery_tag": tag or str(uuid.uuid4()),
                       "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0},
    }).encode()


def run_headers(task_id: str, task: str = "jobyard.run", spec: object = "default", **extra) -> dict:
    """Celery protocol-2 headers for ``task``; ``spec`` is the jobyard_spec header (None: absent)."""
    headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None, "group": None,
               "argsrepr": "()", "kwargsrepr": "{}", "origin": "test", "retries": 0, **extra}
    if spec == "default":
        spec = command_spec()
    if spec is not None:
        headers["jobyard_spec"] = spec
    return headers


def command_spec(*argv: str) -> dict:
    """A valid spec for a busybox command job."""
    return {"name": "escape.marker", "kind": "command", "image": BUSYBOX_IMAGE,
            "command": list(argv) or ["echo", "executed"], "memory": 32 * 1024**2, "timeout": 30}


def call_body(args=(), kwargs=None, embed=None) -> bytes:
    """A protocol-2 body: [args, kwargs, embed]."""
    return json.dumps([list(args), kwargs or {}, embed or {}]).encode()
