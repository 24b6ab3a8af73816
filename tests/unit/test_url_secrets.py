"""Passwords never reach output: ``redact_url`` hides the user part's password and secret
query parameters however the URL is mistyped, ``check_authority`` turns a URL the drivers
would choke on into one ``ConfigurationError``, and every verb that takes a URL reports a
bad one without its password (in its message, its log lines and its exit code)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from activity_logging.config import heartbeat_pattern, resolve_redis_url
from activity_logging.exceptions import ConfigurationError
from activity_logging.urls import check_authority, normalize_async_url, redact_url, shown_url
from tests.cli_run import run

SECRET = "s3cr3tPW"


@pytest.mark.parametrize(("url", "shown"), [
    ("postgress://user:s3cr3tPW@host/db", "postgress://user:***@host/db"),
    ("redis+foo://:s3cr3tPW@h", "redis+foo://:***@h"),
    ("postgresql://u:s3/cr3tPW@h:1/db", "postgresql://u:***@h:1/db"),
    ("postgresql://u:s3@cr3tPW@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:s3?cr3tPW@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:s3#cr3tPW@h/db", "postgresql://u:***@h/db"),
    ("user:s3cr3tPW@host/db", "user:***@host/db"),
    ("postgres:user:s3cr3tPW@host/db", "postgres:***@host/db"),
    ("postgresql://u@h/db?password=s3cr3tPW&sslmode=require",
     "postgresql://u@h/db?password=***&sslmode=require"),
    ("postgresql://u@h/db?sslmode=require&PASSWORD=s3cr3tPW#x",
     "postgresql://u@h/db?sslmode=require&PASSWORD=***#x"),
    ("postgresql://u@h/db?sslpassword=s3cr3tPW;auth_token=s3cr3tPW",
     "postgresql://u@h/db?sslpassword=***;auth_token=***"),
    ("redis://h:6379/0?password=s3cr3tPW", "redis://h:6379/0?password=***"),
    ("rediss://default:s3cr3tPW@h:6380", "rediss://default:***@h:6380"),
    ("postgresql://u:s3cr3tPW@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
])
def test_redact_url_hides_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert SECRET not in redact_url(url)


@pytest.mark.parametrize("url", [
    "sqlite:///activity_logs.db", "sqlite:////tmp/a@b.db", "redis://name@host:6379/0",
    "postgresql://postgres@127.0.0.1:5432/test", "unix:///run/redis.sock?db=2",
    "postgresql://h/db?application_name=me@there",
])
def test_redact_url_leaves_urls_without_a_password_alone(url: str) -> None:
    assert redact_url(url) == url


def test_a_value_without_a_scheme_is_not_shown() -> None:
    assert SECRET not in shown_url(SECRET)
    with pytest.raises(ConfigurationError) as err:
        normalize_async_url(SECRET)
    assert SECRET not in str(err.value)
    assert "8 characters" in str(err.value)


@pytest.mark.parametrize("url", [
    "postgresql://u:s3/cr3tPW@127.0.0.1:5432/db",   # the / ends the host part: port "s3"
    "postgresql://u:s3cr3tPW@127.0.0.1:notaport/db",
    "postgresql://u:s3cr3tPW@127.0.0.1:99999/db",
    "postgresql://u:s3cr3tPW@[::1/db",
    "postgresql://u:s3@cr3tPW@127.0.0.1/db",
    "postgresql://u:s3cr3tPW@[::1]x/db",
])
def test_unparseable_postgres_urls_are_one_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="database_url is not a valid URL") as err:
        normalize_async_url(url)
    assert SECRET not in str(err.value) and "cr3tPW" not in str(err.value)
    assert "percent-encoded" in str(err.value)


@pytest.mark.parametrize("url", [
    "postgresql://u:p@127.0.0.1/db", "postgresql://u:p@[::1]:5432/db",
    "postgresql://u:p@h1:5432,h2:5433/db", "postgresql://u:p%2Fq%40r@h:5432/db",
    "postgresql://h:/db",
])
def test_check_authority_accepts_what_the_drivers_read(url: str) -> None:
    check_authority(url, "database_url")


@pytest.mark.parametrize("url", [
    "redis+foo://:s3cr3tPW@h", "http://:s3cr3tPW@h", "redis://:s3cr3tPW@h:badport/0",
    "redis://u:s3/cr3tPW@127.0.0.1:6379", "redis://:s3cr3tPW@[::1/0", SECRET,
])
def test_bad_redis_urls_are_refused_without_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError, match="redis_url") as err:
        resolve_redis_url(url)
    assert SECRET not in str(err.value) and "cr3tPW" not in str(err.value)


def test_heartbeat_pattern_escapes_glob_characters() -> None:
    assert heartbeat_pattern("activity_log_stream") == "activity_log_stream:heartbeat:*"
    assert heartbeat_pattern("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\:heartbeat:*"


# --- every verb that takes a URL ---------------------------------------------------------------

#: URLs a verb refuses before it connects anywhere: a mistyped scheme, a password with an
#: unencoded / or @, a bad port, a broken IPv6 address, the password alone.
BAD_DATABASE_URLS = [
    f"postgress://user:{SECRET}@host/db",
    f"mysql://user:{SECRET}@host/db",
    f"postgresql://user:s3/{SECRET}@127.0.0.1:1/db",
    f"postgresql://user:{SECRET}@127.0.0.1:notaport/db",
    f"postgresql://user:{SECRET}@[::1/db",
    f"postgresql://user:x@{SECRET}@127.0.0.1:1/db",
    SECRET,
]
#: URLs that parse but name nothing listening: the verb says it cannot connect, exit 3.
UNREACHABLE_DATABASE_URLS = [
    f"postgresql://user:{SECRET}@127.0.0.1:1/db",
    f"postgresql://user@127.0.0.1:1/db?password={SECRET}",
]
BAD_REDIS_URLS = [
    f"redis+foo://:{SECRET}@h",
    f"redis://:{SECRET}@127.0.0.1:badport/0",
    f"redis://user:s3/{SECRET}@127.0.0.1:1",
    f"redis://:{SECRET}@[::1/0",
]
#: Verbs that read the database and end; the long-running ones (worker, scheduler, serve)
#: are run only with URLs refused before they start.
DATABASE_VERBS = ["init-db", "status", "query", "export", "cleanup", "vacuum", "verify"]
LONG_RUNNING = ["worker", "scheduler", "serve"]


def _assert_no_secret(code: int, out: str, err: str, caplog: pytest.LogCaptureFixture) -> None:
    text = out + err + caplog.text
    assert "cr3tPW" not in text, text
    assert "Traceback" not in text, text
    assert code != 0


@pytest.mark.parametrize("url", BAD_DATABASE_URLS)
@pytest.mark.parametrize("verb", DATABASE_VERBS + LONG_RUNNING)
def test_a_bad_database_url_is_reported_without_its_password(
    verb: str, url: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REDIS_URL", raising=False)
    caplog.set_level(logging.DEBUG)
    argv = [verb, "--database-url", url]
    if verb == "worker":
        argv += ["--redis-url", "redis://127.0.0.1:1/0"]
    code, out, err = run(argv, capsys)
    _assert_no_secret(code, out, err, caplog)
    assert code == 2, err


@pytest.mark.parametrize("url", UNREACHABLE_DATABASE_URLS)
@pytest.mark.parametrize("verb", DATABASE_VERBS)
def test_an_unreachable_database_is_reported_without_its_password(
    verb: str, url: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", url)  # the environment's URL is redacted as well
    caplog.set_level(logging.DEBUG)
    code, out, err = run([verb], capsys)
    _assert_no_secret(code, out, err, caplog)
    assert "***" in err


@pytest.mark.parametrize("url", BAD_REDIS_URLS)
@pytest.mark.parametrize("verb", ["status", *LONG_RUNNING])
def test_a_bad_redis_url_is_reported_without_its_password(
    verb: str, url: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path}/a.db"
    assert run(["init-db", "--database-url", db], capsys)[0] == 0
    monkeypatch.setenv("REDIS_URL", url)
    caplog.set_level(logging.DEBUG)
    code, out, err = run([verb, "--database-url", db], capsys)
    _assert_no_secret(code, out, err, caplog)
    assert code == 2, err



def test_demo_refuses_a_database_url_without_its_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["demo", "--database-url", f"postgresql://u:{SECRET}@127.0.0.1:1/db"],
                         capsys)
    assert code == 2
    assert SECRET not in out + err
