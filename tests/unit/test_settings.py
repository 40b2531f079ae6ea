"""Settings: environment parsing, clear errors for bad values, secrets kept out of output."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from streams.settings import Settings, SettingsError, load_settings


def test_defaults_make_the_local_setup_work(monkeypatch) -> None:
    monkeypatch.delenv("STREAMS_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("STREAMS_DATABASE_URL", raising=False)
    s = load_settings()
    assert s.uses_local_kafka and s.uses_local_postgres
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.dsn.startswith("postgresql://postgres@127.0.0.1:55432/")


def test_environment_variables_with_one_prefix(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("STREAMS_KAFKA_BOOTSTRAP", "kafka-1:9092, kafka-2:9093")
    monkeypatch.setenv("STREAMS_DATABASE_URL", "postgresql://app:s3cret@db:5432/app")
    monkeypatch.setenv("STREAMS_TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("STREAMS_PROCESSING_GUARANTEE", "exactly_once")
    s = load_settings()
    assert s.bootstrap_servers == "kafka-1:9092,kafka-2:9093"
    assert not s.uses_local_kafka and not s.uses_local_postgres
    assert s.topic_partitions == 12
    assert s.processing_guarantee.value == "exactly_once"


def test_dotenv_file_is_read(monkeypatch, tmp_path) -> None:
    (tmp_path / ".env").write_text("STREAMS_APP_ID=from-dotenv\nSTREAMS_WEB_PORT=7001\n")
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert (s.app_id, s.web_port) == ("from-dotenv", 7001)


@pytest.mark.parametrize("var, value, expected", [
    ("STREAMS_KAFKA_BOOTSTRAP", "no-port-here", "STREAMS_KAFKA_BOOTSTRAP: expected host:port"),
    ("STREAMS_KAFKA_BOOTSTRAP", "host:99999", "port out of range"),
    ("STREAMS_WEB_PORT", "http", "STREAMS_WEB_PORT: Input should be a valid integer"),
    ("STREAMS_WEB_PORT", "70000", "STREAMS_WEB_PORT: Input should be less than or equal to 65535"),
    ("STREAMS_TOPIC_PARTITIONS", "0", "STREAMS_TOPIC_PARTITIONS: Input should be greater than or equal to 1"),
    ("STREAMS_PROCESSING_GUARANTEE", "maybe_once", "STREAMS_PROCESSING_GUARANTEE: Input should be"),
    ("STREAMS_APP_ID", "bad id!", "STREAMS_APP_ID: must start with a letter or digit"),
    ("STREAMS_LOCAL_KAFKA_HEAP", "lots", "STREAMS_LOCAL_KAFKA_HEAP: expected a JVM size"),
    ("STREAMS_STORE", "redis://x", "STREAMS_STORE: expected rocksdb://"),
    ("STREAMS_DATABASE_URL", "mongodb://u:p@h/db", "STREAMS_DATABASE_URL: expected a postgresql:// or mysql://"),
    ("STREAMS_KAFKA_SSL_CAFILE", "/nonexistent/ca.pem", "file not found: /nonexistent/ca.pem"),
])
def test_invalid_values_name_the_variable(monkeypatch, var: str, value: str, expected: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert expected in str(err.value)


def test_sasl_needs_credentials(monkeypatch) -> None:
    monkeypatch.setenv("STREAMS_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(SettingsError) as err:
        load_settings()
    for var in ("STREAMS_KAFKA_SASL_MECHANISM", "STREAMS_KAFKA_SASL_USERNAME", "STREAMS_KAFKA_SASL_PASSWORD"):
        assert var in str(err.value)


def test_several_errors_are_reported_together(monkeypatch) -> None:
    monkeypatch.setenv("STREAMS_WEB_PORT", "x")
    monkeypatch.setenv("STREAMS_TOPIC_PARTITIONS", "-1")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "STREAMS_WEB_PORT" in str(err.value) and "STREAMS_TOPIC_PARTITIONS" in str(err.value)


def test_security_options_pass_through_to_clients(monkeypatch) -> None:
    monkeypatch.setenv("STREAMS_KAFKA_BOOTSTRAP", "broker:9094")
    monkeypatch.setenv("STREAMS_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("STREAMS_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("STREAMS_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("STREAMS_KAFKA_SASL_PASSWORD", "hunter2")
    s = load_settings()
    kw = s.kafka_client_kwargs()
    assert kw["security_protocol"] == "SASL_PLAINTEXT"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("svc", "hunter2")
    from streams import MessageRegistry, StreamsApp

    app = StreamsApp("sec", registry=MessageRegistry(), settings=s)
    creds = app.faust.conf.broker_credentials
    assert creds.username == "svc" and creds.password == "hunter2"
    assert str(creds.mechanism.value) == "SCRAM-SHA-512"


def test_secrets_never_printed(monkeypatch, caplog) -> None:
    monkeypatch.setenv("STREAMS_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("STREAMS_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("STREAMS_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("STREAMS_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("STREAMS_DATABASE_URL", "postgresql://app:pg-pass-77@db:5432/app")
    s = load_settings()
    logging.getLogger("t").info("settings: %s %r %s", s, s, s.safe_dict())
    text = caplog.text + repr(s) + str(s.safe_dict())
    assert "hunter2" not in text and "pg-pass-77" not in text
    assert s.safe_dict()["database_url"] == "postgresql://app:***@db:5432/app"
    # ... and the CLI's settings view masks them too
    env = {"STREAMS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "STREAMS_KAFKA_SASL_MECHANISM": "PLAIN",
           "STREAMS_KAFKA_SASL_USERNAME": "svc", "STREAMS_KAFKA_SASL_PASSWORD": "hunter2",
           "STREAMS_DATABASE_URL": "postgresql://app:pg-pass-77@db:5432/app", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "streams.cli", "settings", "--json"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "hunter2" not in out and "pg-pass-77" not in out and '"kafka_sasl_username": "svc"' in out


def test_invalid_settings_exit_code_and_message() -> None:
    env = {"STREAMS_WEB_PORT": "eighty", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "streams.cli", "settings"], env=env, capture_output=True, text=True)
    assert res.returncode == 2
    assert "STREAMS_WEB_PORT" in res.stderr and "valid integer" in res.stderr


def test_explicit_app_id_overrides_code_default(tmp_path) -> None:
    from streams import MessageRegistry, StreamsApp

    assert StreamsApp("from-code", registry=MessageRegistry(), settings=Settings(home=tmp_path)).app_id == "from-code"
    assert StreamsApp("from-code", registry=MessageRegistry(),
                      settings=Settings(home=tmp_path, app_id="from-env")).app_id == "from-env"


def test_group_instance_id_blank_means_dynamic_membership_and_a_bad_one_is_named(monkeypatch) -> None:
    monkeypatch.setenv("STREAMS_GROUP_INSTANCE_ID", "")
    assert load_settings().group_instance_id is None
    monkeypatch.setenv("STREAMS_GROUP_INSTANCE_ID", "streams-worker-2")
    assert load_settings().group_instance_id == "streams-worker-2"
    monkeypatch.setenv("STREAMS_GROUP_INSTANCE_ID", "has space")
    with pytest.raises(SettingsError, match="STREAMS_GROUP_INSTANCE_ID"):
        load_settings()
