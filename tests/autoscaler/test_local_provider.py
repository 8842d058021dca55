"""The local provider hands its agent processes the broker URL as a file, not in their environment."""

import os

from tests.conftest import wait_for


def test_local_agents_read_the_broker_password_from_a_file(fleet, acl_user, redis_client, queue_name):
    user, password, url = acl_user
    one = fleet(queues=(queue_name,), env={"JOBYARD_BROKER_URL": url})
    (host,) = one.provider.add(1)
    wait_for(lambda: redis_client.exists(f"jobyard:agent:{host.name}"), 60, message="the local agent to publish")
    assert user in {client.get("user") for client in redis_client.client_list()}
    with open(f"/proc/{host.id}/environ", "rb") as handle:
        environ = dict(item.partition(b"=")[::2] for item in handle.read().split(b"\0") if item)
    leaked = [name for name, value in environ.items() if password.encode() in value]
    assert not leaked, f"the agent's environment holds the password in {leaked}"
    secret_file = environ[b"JOBYARD_BROKER_URL_FILE"].decode()
    assert os.stat(secret_file).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(secret_file)).st_mode & 0o777 == 0o700
