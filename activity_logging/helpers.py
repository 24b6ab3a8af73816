"""Helper functions that log one activity through the standard ``logging`` module.

Every helper here builds the ``extra`` of one ``LogRecord`` and hands it to a logger (the
``"activity"`` logger unless told otherwise) at the level of its ``severity``. Logging is
non-blocking (the ``ActivityHandler`` only enqueues), so none of them needs a thread or a
task of its own.

Contracts shared by every helper:

* Never raises into the caller: any error (a bad argument, a broken handler) is swallowed
  and reported, rate-limited, on stderr.
* Keyword arguments whose names ``logging.LogRecord`` reserves (``name``, ``message``,
  ``args``, ``module``, ``msg``, ``levelname``...) would make ``logging`` raise ``KeyError``;
  they are carried into ``extra["metadata"]`` instead.
* An explicit actor wins over the request's actor as a *pair*: passing ``actor_id`` or
  ``actor_type`` writes both (the missing one as the helper's default or ``None``), so a
  system event can never be stored as ``actor_type="system"`` with a user's id taken from
  the request context. ``actor_id=None`` on its own counts as not given.
* ``changes`` has one shape, ``{"field": {"old": ..., "new": ...}}``;
  ``changes_between(before, after)`` builds it from two versions of an object. The seed's
  ``{"field": [old, new]}`` pairs are still accepted: they are rewritten to the one shape
  when the record is stored (see ``changes.py`` for exactly what is rewritten).
* Usable three ways, all of which log exactly once: called directly
  (``log_call_activity(...)``), awaited (``await log_call_activity(...)``) and passed to
  ``BackgroundTasks.add_task(log_call_activity, ...)``. The helpers log when called and
  return an already-completed awaitable, so ``await`` is optional and never warns. Starlette
  runs such a sync callable in its threadpool, into which anyio copies the request's
  contextvars. ``activity_logger.log_async`` is a real coroutine function for code that
  wants one (no thread hop in background tasks).
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Mapping
from typing import Any, Final

from ._internal import reporter
from .constants import ACTOR_AGENT, ACTOR_SYSTEM, ACTOR_USER, DEFAULT_LOGGER_NAME
from .context import CONTEXT_FIELDS
from .levels import severity_to_level
from .snapshot import RESERVED_EXTRA_KEYS

__all__ = [
    "ActivityLogger",
    "activity_logger",
    "emit_activity",
    "log_agent_activity",
    "log_call_activity",
    "log_lead_activity",
    "log_system_event",
    "log_user_activity",
]

_CONTEXT_KEYS: Final = frozenset(CONTEXT_FIELDS)
_UNSET: Final[Any] = object()


def _resolve_logger(logger: str | logging.Logger | None) -> logging.Logger:
    if logger is None:
        return logging.getLogger(DEFAULT_LOGGER_NAME)
    if isinstance(logger, logging.Logger):
        return logger
    return logging.getLogger(logger)


def build_extra(
    activity_type: str,
    *,
    description: str | None = None,
    actor_type: Any = _UNSET,
    actor_id: Any = _UNSET,
    target_type: Any = None,
    target_id: Any = None,
    changes: Any = None,
    metadata: Any = None,
    fields: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the ``extra`` mapping for one activity; never contains a reserved key.

    ``actor_type``/``actor_id`` left unset are filled from the request context later (by
    ``ContextFilter``); set either and both are written. ``None`` values of the context
    fields in ``fields`` are dropped so the context can fill them; reserved keys move into
    ``extra["metadata"]``, merged over an explicit ``metadata`` mapping.
    """
    extra: dict[str, Any] = {"activity_type": str(activity_type)}
    if description is not None:
        extra["description"] = description
    # ``actor_id=None`` alone means "not known here" (``actor_id=call.agent_id`` on a call
    # with no agent): the request's actor is used, not a typed actor without an id
    if actor_type is _UNSET and actor_id is None:
        actor_id = _UNSET
    elif actor_id is _UNSET and actor_type is None:
        actor_type = _UNSET
    if actor_type is not _UNSET or actor_id is not _UNSET:
        extra["actor_type"] = None if actor_type is _UNSET else actor_type
        extra["actor_id"] = None if actor_id is _UNSET else actor_id
    if target_type is not None:
        extra["target_type"] = target_type
    if target_id is not None:
        extra["target_id"] = target_id
    if changes is not None:
        extra["changes"] = changes
    meta: dict[str, Any] | None = None
    if metadata is not None:
        meta = dict(metadata) if isinstance(metadata, Mapping) else {"metadata": metadata}
    if fields:
        reserved = RESERVED_EXTRA_KEYS
        for key, value in fields.items():
            if key in reserved:
                if meta is None:
                    meta = {}
                meta[key] = value
            elif value is None and key in _CONTEXT_KEYS:
                continue
            else:
                extra[key] = value
    if meta is not None:
        extra["metadata"] = meta
    return extra


def emit_activity(
    activity_type: str,
    description: str | None = None,
    *,
    severity: str | int | None = "info",
    logger: str | logging.Logger | None = None,
    actor_type: Any = _UNSET,
    actor_id: Any = _UNSET,
    target_type: Any = None,
    target_id: Any = None,
    changes: Any = None,
    metadata: Any = None,
    fields: Mapping[str, Any] | None = None,
    exc_info: Any = None,
    stacklevel: int = 1,
) -> bool:
    """Log one activity at the level of ``severity``. Returns True if a record was made.

    Cheap when the logger is disabled for that level (one ``isEnabledFor`` check). Never
    raises: errors are reported, rate-limited, on stderr and give False.
    """
    try:
        log = _resolve_logger(logger)
        level = severity_to_level(severity if severity is None or isinstance(severity, int)
                                  else str(severity))
        if not log.isEnabledFor(level):
            return False
        extra = build_extra(
            activity_type, description=description, actor_type=actor_type, actor_id=actor_id,
            target_type=target_type, target_id=target_id, changes=changes, metadata=metadata,
            fields=fields,
        )
        # ``stacklevel`` counts the frames between the application and this function, so the
        # record's pathname/lineno name the application line that logged, not a helper.
        log.log(level, extra["activity_type"], extra=extra, exc_info=exc_info,
                stacklevel=stacklevel + 1)
        return True
    except Exception as exc:
        reporter.report("helpers.emit", "could not log an activity", exc)
        return False


class _Logged:
    """What a helper returns: the activity is already logged; awaiting this is a no-op."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        yield from ()

    def __repr__(self) -> str:
        return "<activity logged>"


_LOGGED: Final = _Logged()


class ActivityLogger:
    """Logs activities to one logger: ``log(...)`` for sync code, ``await log_async(...)``.

    Args:
        logger: the logger (or its name) records go to; ``"activity"`` by default. The
            attribute of the same name can be reassigned later.
    """

    def __init__(self, logger: str | logging.Logger = DEFAULT_LOGGER_NAME) -> None:
        self.logger: str | logging.Logger = logger

    def log(
        self,
        activity_type: str,
        description: str | None = None,
        *,
        severity: str | int | None = "info",
        actor_type: Any = _UNSET,
        actor_id: Any = _UNSET,
        target_type: Any = None,
        target_id: Any = None,
        changes: Any = None,
        metadata: Any = None,
        logger: str | logging.Logger | None = None,
        **fields: Any,
    ) -> bool:
        """Log one activity now. Never raises; returns True if a record was made.

        Any other keyword becomes a key of the stored ``metadata`` (reserved names included).
        """
        return emit_activity(
            activity_type, description, severity=severity,
            logger=self.logger if logger is None else logger,
            actor_type=actor_type, actor_id=actor_id, target_type=target_type,
            target_id=target_id, changes=changes, metadata=metadata, fields=fields,
            stacklevel=2,
        )

    async def log_async(
        self,
        activity_type: str,
        description: str | None = None,
        *,
        severity: str | int | None = "info",
        actor_type: Any = _UNSET,
        actor_id: Any = _UNSET,
        target_type: Any = None,
        target_id: Any = None,
        changes: Any = None,
        metadata: Any = None,
        logger: str | logging.Logger | None = None,
        **fields: Any,
    ) -> bool:
        """Coroutine twin of ``log``: logging only enqueues, so it runs inline, no thread hop."""
        return emit_activity(
            activity_type, description, severity=severity,
            logger=self.logger if logger is None else logger,
            actor_type=actor_type, actor_id=actor_id, target_type=target_type,
            target_id=target_id, changes=changes, metadata=metadata, fields=fields,
            stacklevel=2,
        )


#: The shared instance used by the snippets in the docs (``await activity_logger.log_async(...)``).
activity_logger: Final = ActivityLogger()


def _target_helper(
    activity_type: str,
    target_type: str,
    target_id: Any,
    description: str | None,
    severity: str | int | None,
    actor_type: Any,
    actor_id: Any,
    default_actor_type: str | None,
    fields: dict[str, Any],
) -> _Logged:
    if actor_id is not _UNSET and actor_id is not None and actor_type is _UNSET:
        actor_type = default_actor_type
    logger = fields.pop("logger", None)
    emit_activity(
        activity_type, description, severity=severity, logger=logger,
        actor_type=actor_type, actor_id=actor_id, target_type=target_type, target_id=target_id,
        changes=fields.pop("changes", None), metadata=fields.pop("metadata", None),
        fields=fields, stacklevel=3,
    )
    return _LOGGED


def log_call_activity(
    activity_type: str,
    call_id: Any = None,
    description: str | None = None,
    *,
    severity: str | int | None = "info",
    actor_type: Any = _UNSET,
    actor_id: Any = _UNSET,
    **fields: Any,
) -> _Logged:
    """Log an activity about a call (``target_type="call"``, ``target_id=call_id``).

    An ``actor_id`` without ``actor_type`` is an agent's. Logs when called; the result may be
    awaited or ignored. Never raises.
    """
    return _target_helper(activity_type, "call", call_id, description, severity,
                          actor_type, actor_id, ACTOR_AGENT, fields)


def log_agent_activity(
    activity_type: str,
    agent_id: Any = None,
    description: str | None = None,
    *,
    severity: str | int | None = "info",
    actor_type: Any = _UNSET,
    actor_id: Any = _UNSET,
    **fields: Any,
) -> _Logged:
    """Log an activity about an agent (``target_type="agent"``, ``target_id=agent_id``).

    The actor comes from the request context unless given (an ``actor_id`` alone is an
    agent's). Logs when called; the result may be awaited or ignored. Never raises.
    """
    return _target_helper(activity_type, "agent", agent_id, description, severity,
                          actor_type, actor_id, ACTOR_AGENT, fields)


def log_lead_activity(
    activity_type: str,
    lead_id: Any = None,
    description: str | None = None,
    *,
    severity: str | int | None = "info",
    actor_type: Any = _UNSET,
    actor_id: Any = _UNSET,
    **fields: Any,
) -> _Logged:
    """Log an activity about a lead (``target_type="lead"``, ``target_id=lead_id``).

    An ``actor_id`` without ``actor_type`` is an agent's. Logs when called; the result may be
    awaited or ignored. Never raises.
    """
    return _target_helper(activity_type, "lead", lead_id, description, severity,
                          actor_type, actor_id, ACTOR_AGENT, fields)


def log_user_activity(
    activity_type: str,
    user_id: Any = None,
    description: str | None = None,
    *,
    severity: str | int | None = "info",
    actor_type: Any = _UNSET,
    actor_id: Any = _UNSET,
    **fields: Any,
) -> _Logged:
    """Log an activity about a user account (``target_type="user"``, ``target_id=user_id``).

    An ``actor_id`` without ``actor_type`` is a user's. Logs when called; the result may be
    awaited or ignored. Never raises.
    """
    return _target_helper(activity_type, "user", user_id, description, severity,
                          actor_type, actor_id, ACTOR_USER, fields)


def log_system_event(
    activity_type: str,
    description: str | None = None,
    *,
    severity: str | int | None = "info",
    actor_type: Any = ACTOR_SYSTEM,
    actor_id: Any = None,
    **fields: Any,
) -> _Logged:
    """Log a system event; the actor is ``("system", actor_id)``, never the request's user.

    Logs when called; the result may be awaited or ignored. Never raises.
    """
    logger = fields.pop("logger", None)
    emit_activity(
        activity_type, description, severity=severity, logger=logger,
        actor_type=actor_type, actor_id=actor_id, target_type=fields.pop("target_type", None),
        target_id=fields.pop("target_id", None), changes=fields.pop("changes", None),
        metadata=fields.pop("metadata", None), fields=fields, stacklevel=2,
    )
    return _LOGGED
