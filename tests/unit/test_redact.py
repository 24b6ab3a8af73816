"""Redaction: secret keys at any depth, decided per record whatever shares its batch."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from activity_logging.redact import REDACTED, Redactor
from activity_logging.snapshot import Snapshotter


def body_of(**extra: Any) -> bytes:
    record = logging.getLogger("activity").makeRecord(
        "activity", logging.INFO, __file__, 1, "m", None, None, extra=extra)
    return Snapshotter(context=False).take(record)


def redacted(redactor: Redactor, *bodies: bytes) -> list[Any]:
    """The extras of each record body after the batch was redacted."""
    fixes = redactor.redact_records(list(bodies))
    return [orjson.loads(fixes.get(i, body)).get("x") for i, body in enumerate(bodies)]


def test_secrets_are_redacted_at_any_depth_and_counted() -> None:
    redactor = Redactor()
    raw = body_of(password="hunter2", changes={"user": {"api_key": "k", "name": "n"}},
                    Authorization="Bearer x", headers=[{"cookie": "c"}], who=None)
    (out,) = redacted(redactor, raw)
    assert out["password"] == out["Authorization"] == REDACTED
    assert out["changes"] == {"user": {"api_key": REDACTED, "name": "n"}}
    assert out["headers"] == [{"cookie": REDACTED}]
    assert redactor.redacted == 4


def test_a_secret_word_in_a_value_alone_changes_nothing() -> None:
    redactor = Redactor()
    raw = body_of(description="user asked for a password reset")
    assert redactor.redact_records([raw]) == {}
    assert redactor.redacted == 0


def test_keys_with_quotes_are_redacted_alone_and_in_company() -> None:
    """A key holding an escaped quote was redacted or not depending on the batch."""
    odd = body_of(**{'password"': "p1", 'my "token" here': "t1"})
    plain = body_of(actor_id="a1")
    secret = body_of(secret="s")
    for batch in ([odd], [plain, odd], [secret, odd, plain]):
        out = redacted(Redactor(), *batch)[batch.index(odd)]
        assert out == {'password"': REDACTED, 'my "token" here': REDACTED}


def test_redaction_can_be_configured_off() -> None:
    redactor = Redactor("")
    raw = body_of(password="p")
    assert redactor.redact_records([raw]) == {}


def test_none_values_and_missing_extras_are_left_alone() -> None:
    redactor = Redactor()
    raw = body_of(token=None)
    bare = body_of()
    assert redactor.redact_records([bare, raw, bare]) == {}


_keys = st.sampled_from(["password", "Password", "my_token", "name", "actor_id", 'x"y', "cvv",
                         "ok", "Authorization", "card_number_2", "note"])
_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
    | st.sampled_from(["password", "token here", '"secret": 1']),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=12,
)
_extras = st.dictionaries(_keys, _values, min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(_extras, st.lists(_extras, max_size=4), st.integers(min_value=0, max_value=4))
def test_a_record_is_redacted_the_same_whatever_else_is_in_its_batch(
    extra: dict[str, Any], others: list[dict[str, Any]], at: int
) -> None:
    mine = orjson.dumps({"ts": 1, "x": extra})
    batch = [orjson.dumps({"ts": 1, "x": o}) for o in others]
    at = min(at, len(batch))
    batch.insert(at, mine)
    alone = redacted(Redactor(), mine)[0]
    assert redacted(Redactor(), *batch)[at] == alone
    expected, _ = Redactor().redact(extra)
    assert alone == expected  # and it is exactly the key-by-key walk


def test_a_key_that_lower_cases_to_a_secret_word_is_redacted() -> None:
    """KELVIN SIGN lower-cases to "k": "TO\u212aEN" is a token key though its bytes are not."""
    (out,) = redacted(Redactor(), body_of(**{"ACCESS_TO\u212aEN": "t"}))
    assert out == {"ACCESS_TO\u212aEN": REDACTED}


def test_non_ascii_key_words_are_found_in_any_case() -> None:
    (out,) = redacted(Redactor("пароль"), body_of(**{"ПАРОЛЬ": "x", "имя": "y"}))
    assert out == {"ПАРОЛЬ": REDACTED, "имя": "y"}


def test_the_json_formatter_redacts_like_the_pipeline() -> None:
    from activity_logging.formatter import ActivityJsonFormatter

    record = logging.getLogger("activity").makeRecord(
        "activity", logging.INFO, __file__, 1, "m", None, None, extra={"password": "hunter2"})
    out = ActivityJsonFormatter().format(record)
    assert "hunter2" not in out and REDACTED in out
