"""A real registry of a test's own: Debian's ``docker-registry`` on a free loopback port.

The registry is the CNCF distribution registry with htpasswd (bcrypt) auth, a temp
storage directory and deletes enabled. dockerd talks plain HTTP to registries on
127.0.0.0/8, so no TLS or engine configuration is needed. Everything started here is
stopped by its pid, and only the tags a test pushed are removed again.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from tests.support.services import free_port, stop_process, temp_dir

_CONFIG = """\
version: 0.1
log: {{level: warn}}
storage: {{filesystem: {{rootdirectory: {data}}}, delete: {{enabled: true}}}}
http: {{addr: "127.0.0.1:{port}"}}
auth: {{htpasswd: {{realm: jobyard-test, path: {htpasswd}}}}}
"""


def _binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (Debian package {package}; run: bash deploy/setup.sh test)")
    return path


@dataclass
class Registry:
    """A ``docker-registry serve`` process of our own, with one htpasswd user."""

    workdir: str = field(default_factory=lambda: temp_dir("jobyard-registry-"))
    port: int = field(default_factory=free_port)
    username: str = "jobyard"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16), repr=False)
    process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def auth_config(self) -> dict[str, str]:
        """Good credentials, as the docker SDK takes them."""
        return {"username": self.username, "password": self.password}

    def start(self, timeout: float = 15.0) -> "Registry":
        """Write the htpasswd file and config, start the registry and wait until it answers."""
        registry = _binary("docker-registry", "docker-registry")
        htpasswd = _binary("htpasswd", "apache2-utils")
        os.makedirs(os.path.join(self.workdir, "data"), exist_ok=True)
        # -i reads the password from stdin, so it never shows in a process listing.
        entry = subprocess.run([htpasswd, "-niB", self.username], input=self.password, capture_output=True,
                               text=True, check=True, timeout=30).stdout
        htpasswd_path = os.path.join(self.workdir, "htpasswd")
        with open(htpasswd_path, "w") as handle:
            handle.write(entry)
        config = os.path.join(self.workdir, "config.yml")
        with open(config, "w") as handle:
            handle.write(_CONFIG.format(data=os.path.join(self.workdir, "data"), port=self.port,
                                        htpasswd=htpasswd_path))
        log = open(os.path.join(self.workdir, "registry.log"), "ab")
        self.process = subprocess.Popen([registry, "serve", config], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).close()
                return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and asking for credentials
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not answer on {self.host}: {self.log()[-2000:]}")

    def log(self) -> str:
        """The registry's own log."""
        try:
            with open(os.path.join(self.workdir, "registry.log"), errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the registry process (by its pid); its storage stays until :meth:`remove`."""
        stop_process(self.process)

    def remove(self) -> None:
        """Stop, then delete the storage, config and htpasswd file."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def push(self, client, image: str, repository: str = "team/app", tag: str = "v1") -> str:
        """Tag ``image`` as ``HOST/repository:tag``, push it, and return the pushed digest.

        The new local tag stays (remove it with :meth:`untag`); failures raise RuntimeError.
        """
        name = f"{self.host}/{repository}"
        client.api.tag(image, name, tag)
        digest = None
        for line in client.api.push(name, tag, stream=True, decode=True, auth_config=self.auth_config):
            if "error" in line:
                raise RuntimeError(f"push of {name}:{tag} failed: {line['error']}")
            digest = line.get("aux", {}).get("Digest", digest)
        if not digest:
            raise RuntimeError(f"push of {name}:{tag} reported no digest")
        return digest

    def untag(self, client, reference: str) -> None:
        """Remove a local tag of this registry's (never anything else), if it is there."""
        import docker.errors

        if not reference.startswith(f"{self.host}/"):
            raise ValueError(f"{reference!r} is not a reference to this registry")
        try:
            client.api.remove_image(reference)
        except docker.errors.NotFound:
            pass
