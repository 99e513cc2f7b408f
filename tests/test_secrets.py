"""Secrets stay secret, without a server: every form of DSN password is redacted, a config
error on a secret key names the key and never the value, and `${credential:NAME}` reads
systemd's credentials directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from offloader.config import dsn_secrets, redact_dsn, redact_secrets
from offloader.configfile import load_config
from offloader.errors import ConfigError
from tests.test_config import BASE, write

# (DSN, its secret, the DSN as shown: everything but the secret, so an operator can tell
# which database it is).
DSNS = [
    (
        "postgresql://offloader:hunter2@db.internal:5432/state",
        "hunter2",
        "postgresql://offloader:***@db.internal:5432/state",
    ),
    (
        "postgresql://offloader:p@ss@db.internal/state",
        "p@ss",
        "postgresql://offloader:***@db.internal/state",
    ),
    (
        "postgresql://offloader:a:b/c?d#e=f@db.internal/state",
        "a:b/c?d#e=f",
        "postgresql://offloader:***@db.internal/state",
    ),
    (
        "postgresql://offloader:p%40ss%3A1@db.internal/state",
        "p%40ss%3A1",
        "postgresql://offloader:***@db.internal/state",
    ),
    (
        "postgresql://db.internal/state?password=hunter2&sslmode=require",
        "hunter2",
        "postgresql://db.internal/state?password=***&sslmode=require",
    ),
    (
        "postgresql://db.internal/state?sslmode=require&passwd=hunter2",
        "hunter2",
        "postgresql://db.internal/state?sslmode=require&passwd=***",
    ),
    (
        "postgresql://u@db.internal/state?sslpassword=keypass&sslmode=verify-full",
        "keypass",
        "postgresql://u@db.internal/state?sslpassword=***&sslmode=verify-full",
    ),
    (
        "postgresql://db.internal/state?secret=s3cr3t",
        "s3cr3t",
        "postgresql://db.internal/state?secret=***",
    ),
    (
        "postgresql://db.internal/state?TOKEN=tok-123&application_name=a@b",
        "tok-123",
        "postgresql://db.internal/state?TOKEN=***&application_name=a@b",
    ),
    (
        "postgresql://db.internal/state?password=x@y:z",
        "x@y:z",
        "postgresql://db.internal/state?password=***",
    ),
    (
        "host=db.internal password='two words' dbname=state",
        "two words",
        "host=db.internal password=*** dbname=state",
    ),
    (
        "host=db.internal password=hunter2 dbname=state",
        "hunter2",
        "host=db.internal password=*** dbname=state",
    ),
]


@pytest.mark.parametrize(("dsn", "secret", "shown"), DSNS)
def test_redact_dsn_hides_every_form_of_password(dsn: str, secret: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown
    assert secret not in shown


@pytest.mark.parametrize(("dsn", "secret", "shown"), DSNS)
def test_driver_text_quoting_a_dsn_secret_is_scrubbed(dsn: str, secret: str, shown: str) -> None:
    from urllib.parse import unquote

    said = f"connection to {dsn} failed: password {unquote(secret)!r} rejected"
    scrubbed = redact_secrets(said, dsn_secrets(dsn))
    assert secret not in scrubbed and unquote(secret) not in scrubbed, scrubbed


def test_redact_dsn_leaves_a_dsn_without_secrets_alone() -> None:
    for dsn in (
        "postgresql://postgres@127.0.0.1:5432/offloader",
        "postgresql://127.0.0.1:5432/offloader?application_name=a@b&sslmode=require",
    ):
        assert redact_dsn(dsn) == dsn
        assert dsn_secrets(dsn) == ()


SECRET = "hunter2-do-not-print"


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('password = "${CH_PASS:-}"', f'password = ["{SECRET}"]', "clickhouse.password"),
        (
            'dsn = "postgresql://postgres:${PG_PASS:-secret}@127.0.0.1:5432/offloader"',
            f'dsn = ["postgresql://u:{SECRET}@h/db"]',
            "postgres.dsn",
        ),
        (
            'warehouse = "file:///tmp/warehouse"',
            f'warehouse = "file:///tmp/warehouse"\n"s3.secret-access-key" = ["{SECRET}"]',
            "iceberg.catalog.s3.secret-access-key",
        ),
        (
            'warehouse = "file:///tmp/warehouse"',
            f'warehouse = "file:///tmp/warehouse"\ntoken = {{ value = ["{SECRET}"] }}',
            "iceberg.catalog.token.value",
        ),
    ],
)
def test_a_rejected_secret_value_is_named_by_its_key_not_shown(
    tmp_path: Path, old: str, new: str, key: str
) -> None:
    assert old in BASE
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, BASE.replace(old, new)), env={})
    message = str(err.value)
    assert key in message and "not shown" in message, message
    assert SECRET not in message, message


def test_a_rejected_ordinary_value_is_still_shown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"clickhouse\.host must be a string, got \['h'\]"):
        load_config(write(tmp_path, BASE.replace('host = "127.0.0.1"', 'host = ["h"]')), env={})


CREDENTIAL = 'password = "${credential:clickhouse_password}"'


def test_credential_is_read_from_the_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "clickhouse_password").write_text("p@ss ${HOME}\n")  # taken as it is
    (creds / "postgres_password").write_text("pg-secret")
    text = BASE.replace('password = "${CH_PASS:-}"', CREDENTIAL).replace(
        "${PG_PASS:-secret}", "${credential:postgres_password}"
    )
    env = {"CREDENTIALS_DIRECTORY": str(creds), "HOME": "/root"}
    cfg = load_config(write(tmp_path, text), env=env)
    assert cfg.clickhouse.password == "p@ss ${HOME}"  # one trailing newline dropped
    assert cfg.postgres.dsn == "postgresql://postgres:pg-secret@127.0.0.1:5432/offloader"
    assert "pg-secret" not in repr(cfg.postgres) and "p@ss" not in repr(cfg.clickhouse)


def test_a_missing_credential_is_an_error_naming_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace('password = "${CH_PASS:-}"', CREDENTIAL))
    with pytest.raises(ConfigError) as unset:
        load_config(path, env={})
    assert "clickhouse.password" in str(unset.value)
    assert "CREDENTIALS_DIRECTORY is not set" in str(unset.value)
    assert "LoadCredential=clickhouse_password:" in str(unset.value)
    with pytest.raises(ConfigError) as missing:
        load_config(path, env={"CREDENTIALS_DIRECTORY": str(tmp_path / "none")})
    assert f"{tmp_path}/none/clickhouse_password" in str(missing.value)
    assert "No such file" in str(missing.value) and "clickhouse.password" in str(missing.value)


def test_a_credential_name_cannot_leave_the_directory(tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("not a credential")
    creds = tmp_path / "creds"
    creds.mkdir()
    path = write(tmp_path, BASE.replace('"${CH_PASS:-}"', '"${credential:../outside}"'))
    with pytest.raises(ConfigError, match=r"clickhouse\.password refers to .*credential's name"):
        load_config(path, env={"CREDENTIALS_DIRECTORY": str(creds)})
