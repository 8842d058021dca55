"""Registry credentials from a Docker config file, the way the Docker CLI finds them.

For a registry host, in order: its ``credHelpers`` entry, then ``credsStore``, then
its ``auths`` entry (``auth`` = base64 ``user:pass``, or ``username``/``password``, or
``identitytoken``). Helpers speak the standard protocol: ``docker-credential-NAME
get`` with the server on stdin, ``{"Username", "Secret"}`` on stdout. Secrets stay
inside :class:`RegistryCredentials` and :class:`AuthConfig`, whose reprs redact
them; no error message here ever carries one, or a helper's output.

A private Amazon ECR registry (``<account>.dkr.ecr.<region>.amazonaws.com``) the config
gives no credentials for gets a token from ``ecr.get_authorization_token`` through
boto3 (:class:`EcrTokens`), cached per account and region and fetched again before it
expires; ECR's own helper (``credHelpers``: ``docker-credential-ecr-login``) works too.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from tasks.errors import JobyardError

#: The key Docker files Docker Hub's credentials under.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NOT_FOUND = "credentials not found"
_ECR_HOST = re.compile(r"(?P<account>[0-9]{12})\.dkr\.ecr\.(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2})"
                       r"\.amazonaws\.com(?:\.cn)?")
#: How long an ECR token lasts (AWS: 12 hours), when the reply does not say.
ECR_TOKEN_LIFETIME = 12 * 3600.0
#: A token is fetched again this long before it expires, so that a pull (at most the
#: agent's --pull-timeout, 10 min by default) never runs on a token about to lapse.
ECR_REFRESH_BEFORE = 30 * 60.0
MAX_CONFIG_BYTES = 1024 * 1024
MAX_HELPER_OUTPUT = 64 * 1024
HELPER_TIMEOUT = 10.0


class CredentialsError(JobyardError):
    """The registry config or a credential helper could not give credentials."""


class AuthConfig(dict):
    """A docker-SDK ``auth_config`` dict whose repr never shows the user or the secret."""

    def __repr__(self) -> str:
        shown = {key: ("***" if key in ("username", "password", "identitytoken") else value) for key, value in self.items()}
        return f"AuthConfig({shown!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class RegistryCredentials:
    """Credentials for one registry: a user and password, or an identity token."""

    registry: str
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    def __repr__(self) -> str:
        kind = "token" if self.identity_token else "password"
        return f"RegistryCredentials(registry={self.registry!r}, {kind}=***)"

    __str__ = __repr__

    def auth_config(self) -> AuthConfig:
        """The ``auth_config`` dict the docker SDK sends as ``X-Registry-Auth``."""
        server = DOCKER_HUB_KEY if self.registry == "docker.io" else self.registry
        if self.identity_token:
            return AuthConfig(identitytoken=self.identity_token, serveraddress=server)
        return AuthConfig(username=self.username, password=self.password, serveraddress=server)


def registry_host(key: str) -> str:
    """The host a config key or image registry names, Docker Hub's aliases as ``docker.io``.

    ``https://index.docker.io/v1/`` → ``docker.io``; ``http://reg:5000/x`` → ``reg:5000``.
    """
    for scheme in ("https://", "http://"):
        if key.startswith(scheme):
            key = key[len(scheme):]
            break
    host = key.split("/", 1)[0].lower()
    return "docker.io" if host in _HUB_HOSTS else host


def default_config_path() -> str:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    directory = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(directory, "config.json")


def _read_json(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise CredentialsError(f"cannot read the registry config {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise CredentialsError(f"the registry config {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise CredentialsError(f"the registry config {path} is not JSON") from None
    if not isinstance(data, dict):
        raise CredentialsError(f"the registry config {path} is not a JSON object")
    return data


class DockerConfig:
    """A Docker ``config.json``: ``auths``, ``credHelpers`` and ``credsStore``."""

    def __init__(self, data: dict, path: str = "<memory>", helper_timeout: float = HELPER_TIMEOUT,
                 ecr: "EcrTokens | None" = None):
        self.path = path
        self.helper_timeout = helper_timeout
        self.ecr = ecr or EcrTokens()
        self.auths = self._hosts(data.get("auths", {}), "auths", dict)
        self.helpers = self._hosts(data.get("credHelpers", {}), "credHelpers", str)
        self.store = data.get("credsStore") or None
        for name in (self.store, *self.helpers.values()):
            if name is not None and not (isinstance(name, str) and _HELPER_NAME.fullmatch(name)):
                raise CredentialsError(f"{path}: a credential helper name is malformed")

    def _hosts(self, section: object, name: str, kind: type) -> dict:
        if not isinstance(section, dict) or not all(isinstance(v, kind) for v in section.values()):
            raise CredentialsError(f"{self.path}: {name} must map registries to {kind.__name__} values")
        return {registry_host(key): value for key, value in section.items()}

    @classmethod
    def load(cls, path: str | None = None, helper_timeout: float = HELPER_TIMEOUT,
             ecr: "EcrTokens | None" = None) -> "DockerConfig":
        """Read ``path``; with no path, the default one, and a missing default means no credentials."""
        if path is None:
            path = default_config_path()
            if not os.path.exists(path):
                return cls({}, path, helper_timeout, ecr)
        return cls(_read_json(path), path, helper_timeout, ecr)

    def credentials(self, registry: str) -> RegistryCredentials | None:
        """Credentials for ``registry`` (a host, or any key form), or None for anonymous."""
        host = registry_host(registry)
        if host in self.helpers:
            return self._from_helper(self.helpers[host], host)
        if self.store is not None:
            found = self._from_helper(self.store, host)
            if found is not None:
                return found
        found = self._from_auths(host, self.auths[host]) if host in self.auths else None
        return found or self.ecr.credentials(host)

    def auth_config(self, registry: str) -> AuthConfig:
        """The docker-SDK ``auth_config`` for ``registry``; empty (anonymous) when none."""
        found = self.credentials(registry)
        return found.auth_config() if found else AuthConfig()

    def _from_auths(self, host: str, entry: dict) -> RegistryCredentials | None:
        token = entry.get("identitytoken") or ""
        username, password = entry.get("username") or "", entry.get("password") or ""
        if entry.get("auth"):
            username, password = _decode_auth(self.path, host, entry["auth"])
        if not all(isinstance(v, str) for v in (token, username, password)):
            raise CredentialsError(f"{self.path}: auths entry for {host} is malformed")
        if not (token or username or password):
            return None
        return RegistryCredentials(host, username, password, token)

    def _from_helper(self, name: str, host: str) -> RegistryCredentials | None:
        reply = run_helper(name, DOCKER_HUB_KEY if host == "docker.io" else host, self.helper_timeout)
        if reply is None:
            return None
        username, secret = reply
        if username == "<token>":
            return RegistryCredentials(host, identity_token=secret)
        return RegistryCredentials(host, username, secret)


def _decode_auth(path: str, host: str, value: object) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
        raise CredentialsError(f"{path}: auths entry for {host} has an auth that is not base64") from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise CredentialsError(f"{path}: auths entry for {host} has an auth that is not user:password")
    return username, password


def run_helper(name: str, server: str, timeout: float = HELPER_TIMEOUT) -> tuple[str, str] | None:
    """``docker-credential-NAME get`` for ``server``: (username, secret), or None when it has none."""
    if not _HELPER_NAME.fullmatch(name):
        raise CredentialsError("a credential helper name is malformed")
    binary = shutil.which(f"docker-credential-{name}")
    if binary is None:
        raise CredentialsError(f"credential helper docker-credential-{name} (for {server}) is not on PATH")
    try:
        done = subprocess.run([binary, "get"], input=server.encode(), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CredentialsError(f"credential helper docker-credential-{name} did not answer "
                               f"for {server} within {timeout:g}s") from None
    except OSError as exc:
        raise CredentialsError(f"cannot run credential helper docker-credential-{name}: {exc.strerror}") from None
    if done.returncode != 0:
        if _NOT_FOUND in done.stdout[:MAX_HELPER_OUTPUT].decode(errors="replace").lower():
            return None
        raise CredentialsError(f"credential helper docker-credential-{name} failed for {server} "
                               f"(exit status {done.returncode})")
    return _parse_helper_reply(name, server, done.stdout)


def _parse_helper_reply(name: str, server: str, raw: bytes) -> tuple[str, str]:
    try:
        if len(raw) > MAX_HELPER_OUTPUT:
            raise ValueError
        reply = json.loads(raw)
        username, secret = reply["Username"], reply["Secret"]
        if not (isinstance(username, str) and isinstance(secret, str)):
            raise ValueError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CredentialsError(f"credential helper docker-credential-{name} gave no JSON "
                               f"{{Username, Secret}} for {server}") from None
    return username, secret


def ecr_registry(host: str) -> tuple[str, str] | None:
    """(account, region) of a private ECR registry host, or None for any other host."""
    match = _ECR_HOST.fullmatch(host)
    return (match["account"], match["region"]) if match else None


def _boto3_ecr_client(region: str):
    try:
        import boto3
    except ImportError:
        raise CredentialsError("ECR registries need boto3: pip install 'jobyard[aws]'") from None
    # botocore logs every response body at DEBUG, and this one is the token.
    parsers = logging.getLogger("botocore.parsers")
    if parsers.getEffectiveLevel() < logging.INFO:
        parsers.setLevel(logging.INFO)
    return boto3.client("ecr", region_name=region)


class EcrTokens:
    """ECR registry tokens from ``ecr.get_authorization_token``, cached per account and region.

    AWS credentials come the usual boto3 way (instance role, environment, profile).
    ``client_factory(region)`` makes the ECR client; ``clock`` gives epoch seconds. A
    token is fetched again ``refresh_before`` seconds before it expires. Errors name
    the registry and the AWS error code, never a token.
    """

    def __init__(self, client_factory=None, clock=time.time, refresh_before: float = ECR_REFRESH_BEFORE):
        self.client_factory = client_factory or _boto3_ecr_client
        self.clock = clock
        self.refresh_before = refresh_before
        self._tokens: dict[tuple[str, str], tuple[float, RegistryCredentials]] = {}
        self._lock = threading.Lock()

    def credentials(self, host: str) -> RegistryCredentials | None:
        """Credentials for the ECR registry ``host``; None when ``host`` is not one."""
        registry = ecr_registry(host)
        if registry is None:
            return None
        with self._lock:
            cached = self._tokens.get(registry)
            if cached is None or self.clock() >= cached[0] - self.refresh_before:
                cached = self._tokens[registry] = self._fetch(host, *registry)
            return cached[1]

    def _fetch(self, host: str, account: str, region: str) -> tuple[float, RegistryCredentials]:
        client = self.client_factory(region)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            reply = client.get_authorization_token(registryIds=[account])
        except ClientError as exc:
            raise CredentialsError(f"ECR refused a token for {host}: "
                                   f"{exc.response.get('Error', {}).get('Code', 'ClientError')}") from None
        except BotoCoreError as exc:
            raise CredentialsError(f"cannot get an ECR token for {host}: {type(exc).__name__}") from None
        return _parse_ecr_token(host, reply, self.clock())


def _parse_ecr_token(host: str, reply: object, now: float) -> tuple[float, RegistryCredentials]:
    """(expiry, credentials) from a get_authorization_token reply for ``host``."""
    try:
        (data,) = reply["authorizationData"]
        decoded = base64.b64decode(data["authorizationToken"], validate=True).decode()
        endpoint = registry_host(data["proxyEndpoint"])
        expires = data.get("expiresAt")
    except (KeyError, TypeError, ValueError, binascii.Error, UnicodeDecodeError):
        raise CredentialsError(f"ECR gave a malformed authorization token for {host}") from None
    username, colon, password = decoded.partition(":")
    if not (colon and username and password):
        raise CredentialsError(f"ECR gave an authorization token for {host} that is not user:password")
    if endpoint != host:
        raise CredentialsError(f"ECR gave a token for another registry than {host}")
    expiry = expires.timestamp() if isinstance(expires, datetime) else now + ECR_TOKEN_LIFETIME
    return min(expiry, now + ECR_TOKEN_LIFETIME), RegistryCredentials(host, username, password)
