"""Sentinel URLs read into settings, the app's transport options and the client factory (no services)."""

import pytest
import redis

from tasks.app import create_app
from tasks.clients import PrimaryConnection, SentinelURL, redis_client
from tasks.config import Settings, redact
from tasks.errors import SettingsError

pytestmark = pytest.mark.pure

URL = "sentinel://:s3cret@10.0.0.1:26379/0;sentinel://:s3cret@10.0.0.2/0;sentinel://:s3cret@10.0.0.3:26380/0"


def test_a_sentinel_url_is_read_with_its_sentinels_database_and_password():
    parsed = SentinelURL.parse(URL, "JOBYARD_BROKER_URL")
    assert parsed.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26380))
    assert parsed.db == 0 and parsed.password == "s3cret" and "s3cret" not in repr(parsed)


def test_the_default_result_backend_of_a_sentinel_broker_is_db_1_of_every_sentinel():
    settings = Settings.from_env({"JOBYARD_BROKER_URL": URL})
    assert settings.result_backend == URL.replace("/0", "/1")
    assert settings.sentinel_master == "mymaster"


@pytest.mark.parametrize("url", [
    "sentinel://:s3cret@h1:26379;redis://:s3cret@h2:6379",
    "sentinel://:s3cret@h1:port",
    "sentinel://:s3cret@h1:26379/x",
    "sentinel://:s3cret@h1:26379/0?master=x",
    "sentinel://;",
])
def test_a_bad_sentinel_url_names_the_variable_and_never_the_password(url):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"JOBYARD_BROKER_URL": url})
    assert "JOBYARD_BROKER_URL" in str(caught.value) and "s3cret" not in str(caught.value)


def test_a_bad_master_name_is_refused():
    with pytest.raises(SettingsError, match="JOBYARD_SENTINEL_MASTER"):
        Settings.from_env({"JOBYARD_BROKER_URL": URL, "JOBYARD_SENTINEL_MASTER": "my master"})


def test_the_sentinels_password_may_come_from_a_file_and_stays_out_of_repr(tmp_path):
    secret = tmp_path / "sentinel-password"
    secret.write_text("sentinel-pw\n")
    settings = Settings.from_env({"JOBYARD_BROKER_URL": URL, "JOBYARD_SENTINEL_PASSWORD_FILE": str(secret),
                                  "JOBYARD_SENTINEL_MASTER": "jobs"})
    assert settings.sentinel_password == "sentinel-pw" and "sentinel-pw" not in repr(settings)
    app = create_app(settings)
    options = app.conf.broker_transport_options
    assert options["master_name"] == "jobs" and options["sentinel_kwargs"]["password"] == "sentinel-pw"
    assert app.conf.result_backend_transport_options["master_name"] == "jobs"


def test_a_sentinel_url_gets_jobyards_transports_and_backend():
    from executor.intake import TRANSPORTS as AGENT_TRANSPORTS

    app = create_app(Settings.from_env({"JOBYARD_BROKER_URL": URL}))
    assert app.conf.broker_transport == "sentinel-jobyard"
    assert AGENT_TRANSPORTS["sentinel"] == "sentinel-screened"
    assert type(app.backend).__name__ == "JobSentinelBackend"
    assert type(app.connection_for_write().transport).__name__ == "SentinelTransport"


def test_tls_options_in_a_sentinel_url_turn_on_tls_to_primary_and_sentinels():
    url = "sentinel://h1:26379/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem;sentinel://h2:26379/0"
    settings = Settings.from_env({"JOBYARD_BROKER_URL": url})
    app = create_app(settings)
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": "required", "ssl_ca_certs": "/ca.pem"}
    assert app.conf.broker_transport_options["sentinel_kwargs"]["ssl"] is True
    client = redis_client(url, settings)
    assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"
    # Over TLS too, a returning old primary's NOREPLICAS is a reconnect to the new one.
    connection = client.connection_pool.make_connection()
    assert isinstance(connection, redis.SSLConnection) and isinstance(connection, PrimaryConnection)


def test_redact_hides_every_password_of_a_sentinel_url():
    assert "s3cret" not in redact(URL) and redact(URL).count("***") == 3
