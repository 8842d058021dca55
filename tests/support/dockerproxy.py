"""A Docker socket of a test's own that forwards to the real engine and can stall.

An agent started with ``DOCKER_HOST=<proxy.url>`` talks to the machine's engine
through this proxy; :meth:`DockerSocketProxy.stall` then makes the engine API hang
for a while without pausing or signalling the machine's dockerd.
"""

from __future__ import annotations

import os
import socket
import threading
import time

DOCKER_SOCKET = "/var/run/docker.sock"
_METHODS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ")


class DockerSocketProxy:
    """A threaded unix-socket proxy: every connection is piped byte for byte to ``upstream``.

    While a stall is on, bytes from clients (requests) are held until it ends;
    with ``responses=True`` bytes from the engine are held as well.
    """

    def __init__(self, path: str, upstream: str = DOCKER_SOCKET):
        self.path = path
        self.upstream = upstream
        #: (monotonic time, request line) of every request seen, in order.
        self.requests: list[tuple[float, str]] = []
        self.stall_started: float | None = None
        self._lock = threading.Lock()
        self._until = 0.0
        self._stall_responses = False
        self._armed: tuple[str, float, bool] | None = None
        self._server: socket.socket | None = None
        self._sockets: set[socket.socket] = set()

    @property
    def url(self) -> str:
        """The ``DOCKER_HOST`` value that points at this proxy."""
        return f"unix://{self.path}"

    def start(self) -> "DockerSocketProxy":
        """Listen on :attr:`path` and forward in daemon threads."""
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(self.path)
        os.chmod(self.path, 0o600)
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, name="docker-proxy", daemon=True).start()
        return self

    def stall(self, seconds: float, after: str | None = None, responses: bool = False) -> None:
        """Hold all requests for ``seconds``: from now, or from the next request whose
        request line contains ``after`` (that request is held too)."""
        with self._lock:
            if after is None:
                self._begin(seconds, responses)
            else:
                self._armed = (after, seconds, responses)

    def release(self) -> None:
        """End the stall now (and drop an armed one): held bytes flow on."""
        with self._lock:
            self._until = 0.0
            self._armed = None

    def stalling(self) -> bool:
        """Whether a stall is on right now."""
        with self._lock:
            return time.monotonic() < self._until

    def seen(self, fragment: str, since: float = 0.0) -> list[str]:
        """Request lines containing ``fragment`` seen at or after ``since`` (monotonic)."""
        with self._lock:
            return [line for at, line in self.requests if at >= since and fragment in line]

    def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            _close(sock)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _begin(self, seconds: float, responses: bool) -> None:
        now = time.monotonic()
        self.stall_started = now
        self._until = now + seconds
        self._stall_responses = responses

    def _accept(self) -> None:
        while self._server is not None:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                engine.connect(self.upstream)
            except OSError:
                _close(client)
                _close(engine)
                continue
            with self._lock:
                self._sockets.update((client, engine))
            threading.Thread(target=self._pump, args=(client, engine, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(engine, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, requests: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if requests:
                    self._note(data)
                self._hold(requests)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                _close(sock)
            with self._lock:
                self._sockets.difference_update((source, target))

    def _note(self, data: bytes) -> None:
        if not data.startswith(_METHODS):
            return
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        with self._lock:
            self.requests.append((time.monotonic(), line))
            if self._armed and self._armed[0] in line:
                _, seconds, responses = self._armed
                self._armed = None
                self._begin(seconds, responses)

    def _hold(self, requests: bool) -> None:
        while True:
            with self._lock:
                remaining = self._until - time.monotonic()
                applies = requests or self._stall_responses
            if remaining <= 0 or not applies:
                return
            time.sleep(min(remaining, 0.05))


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
