"""``@log_activity``: log an activity each time a function or method succeeds or fails.

Works on sync and async functions, methods, static and class methods (put it under
``@staticmethod``/``@classmethod``). The wrapper is ``functools.wraps``-transparent: name,
docstring, ``__wrapped__`` and so ``inspect.signature`` are the wrapped function's, which is
what FastAPI reads for dependency injection; the return value is passed through as is.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, ParamSpec, TypeVar, cast, overload

from ._internal import reporter
from .constants import DEFAULT_LOGGER_NAME
from .context import get_context
from .helpers import _UNSET, emit_activity
from .levels import severity_to_level
from .request_context import MAX_USER_AGENT_CHARS, canonical_ip

__all__ = ["log_activity"]

P = ParamSpec("P")
R = TypeVar("R")

TargetId = str | Callable[[Any], Any] | None
Changes = Mapping[str, Any] | Callable[[Any], Any] | None

_MAX_ERROR_CHARS: Final = 2_048


def _target_of(result: Any, spec: TargetId) -> Any:
    if spec is None or result is None:
        return None
    if callable(spec):
        return spec(result)
    if isinstance(result, Mapping):
        return result.get(spec)
    return getattr(result, spec, None)


def _request_fields(request: Any) -> dict[str, Any]:
    """Request details from a Starlette ``Request`` passed as ``request=`` (no middleware ran)."""
    fields: dict[str, Any] = {}
    client = getattr(request, "client", None)
    host = getattr(client, "host", None)
    if isinstance(host, str):
        # a test client or a unix socket is not an address the store accepts: leave it out
        address = canonical_ip(host)
        if address is not None:
            fields["ip_address"] = address
    headers = getattr(request, "headers", None)
    if headers is not None:
        agent = headers.get("user-agent")
        if agent:
            fields["user_agent"] = str(agent)[:MAX_USER_AGENT_CHARS]
    method = getattr(request, "method", None)
    if isinstance(method, str):
        fields["http_method"] = method
    url = getattr(request, "url", None)
    path = getattr(url, "path", None)
    if isinstance(path, str):
        fields["path"] = path
    return fields


class _Spec:
    """Everything the wrapper needs, resolved once at decoration time."""

    __slots__ = (
        "activity_type",
        "actor_id",
        "actor_type",
        "changes",
        "description",
        "error_level",
        "fields",
        "log",
        "log_errors",
        "metadata",
        "qualname",
        "signature",
        "success_level",
        "target_id",
        "target_id_arg",
        "target_type",
    )

    def __init__(self, func: Callable[..., Any], **options: Any) -> None:
        self.activity_type: str = options["activity_type"]
        self.description: str | None = options["description"]
        self.target_type: str | None = options["target_type"]
        self.target_id: TargetId = options["target_id"]
        self.target_id_arg: str | None = options["target_id_arg"]
        self.actor_type: Any = options["actor_type"]
        self.actor_id: Any = options["actor_id"]
        self.metadata: Mapping[str, Any] | None = options["metadata"]
        self.changes: Changes = options["changes"]
        self.log_errors: bool = options["log_errors"]
        self.fields: dict[str, Any] = dict(options["fields"])
        logger = options["logger"]
        self.log: logging.Logger = (
            logger if isinstance(logger, logging.Logger)
            else logging.getLogger(logger or DEFAULT_LOGGER_NAME)
        )
        self.success_level = severity_to_level(options["severity"])
        self.error_level = severity_to_level(options["error_severity"], logging.ERROR)
        self.qualname = getattr(func, "__qualname__", repr(func))
        self.signature = inspect.signature(func) if self.target_id_arg else None

    def emit(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any = None,
        error: BaseException | None = None,
    ) -> None:
        """Log the activity for one call. Never raises."""
        try:
            fields: dict[str, Any] = dict(self.fields) if self.fields else {}
            target_id: Any = None
            if error is None:
                target_id = _target_of(result, self.target_id)
            if target_id is None and self.signature is not None:
                try:
                    bound = self.signature.bind_partial(*args, **kwargs)
                    target_id = bound.arguments.get(cast(str, self.target_id_arg))
                except TypeError:
                    target_id = None
            request = kwargs.get("request")
            if request is not None and not get_context().get("request_id"):
                fields.update(_request_fields(request))
            meta: dict[str, Any] | None = dict(self.metadata) if self.metadata else None
            changes: Any = None
            if error is None and self.changes is not None:
                changes = self.changes(result) if callable(self.changes) else self.changes
            if error is not None:
                meta = meta or {}
                meta["function"] = self.qualname
                meta["error_type"] = type(error).__name__
                try:
                    message = str(error)
                except Exception:
                    message = f"<unprintable {type(error).__name__}>"
                meta["error_message"] = message[:_MAX_ERROR_CHARS]
            emit_activity(
                self.activity_type, self.description,
                severity=self.error_level if error is not None else self.success_level,
                logger=self.log, actor_type=self.actor_type, actor_id=self.actor_id,
                target_type=self.target_type, target_id=target_id, changes=changes,
                metadata=meta, fields=fields, stacklevel=3,
            )
        except Exception as exc:  # a failing target_id/changes callable is never the caller's problem
            reporter.report("decorators.emit", f"could not log activity of {self.qualname}", exc)


@overload
def log_activity(activity_type: Callable[P, R]) -> Callable[P, R]: ...


@overload
def log_activity(
    activity_type: str,
    description: str | None = None,
    target_type: str | None = None,
    logger: str | logging.Logger | None = None,
    *,
    target_id: TargetId = "id",
    target_id_arg: str | None = None,
    severity: str | int = "info",
    error_severity: str | int = "error",
    actor_type: Any = _UNSET,
    actor_id: Any = _UNSET,
    metadata: Mapping[str, Any] | None = None,
    changes: Changes = None,
    log_errors: bool = True,
    **fields: Any,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def log_activity(
    activity_type: str | Callable[..., Any],
    description: str | None = None,
    target_type: str | None = None,
    logger: str | logging.Logger | None = None,
    *,
    target_id: TargetId = "id",
    target_id_arg: str | None = None,
    severity: str | int = "info",
    error_severity: str | int = "error",
    actor_type: Any = _UNSET,
    actor_id: Any = _UNSET,
    metadata: Mapping[str, Any] | None = None,
    changes: Changes = None,
    log_errors: bool = True,
    **fields: Any,
) -> Any:
    """Decorate a function so each call logs one activity: on success, or on failure.

    Args:
        activity_type: stored ``activity_type`` (``@log_activity`` bare uses the function name).
        description: stored ``description``.
        target_type: stored ``target_type``.
        logger: logger or logger name; ``"activity"`` by default.
        target_id: how to get ``target_id`` from the return value: an attribute (or mapping
            key) name, ``"id"`` by default, or a callable taking the result; ``None`` for none.
        target_id_arg: name of a parameter whose argument is the target id when the result
            has none (``update_call(call_id, ...)``), and on failure.
        severity: severity of the success activity (``"info"``).
        error_severity: severity of the failure activity (``"error"``).
        actor_type, actor_id: a fixed actor (as a pair); by default the request's actor.
        metadata: constant keys added to the stored metadata.
        changes: the success activity's ``changes``, in the one shape ``{"field": {"old":
            ..., "new": ...}}``: a mapping, or a callable taking the result (``lambda call:
            {"status": {"old": None, "new": call.status}}``; ``changes_between`` builds it
            from two versions). Not logged on failure, where nothing changed.
        log_errors: log an activity when the function raises (default True).
        **fields: constant extra fields for every activity (``module="billing"``); names
            ``LogRecord`` reserves are carried into metadata, as with the helpers.

    On success logs at ``severity`` with ``target_id`` taken from the result. When the
    function raises an ``Exception``, logs at ``error_severity`` with ``error_type`` and
    ``error_message`` (``str(error)``, cut to 2,048 characters) in metadata and re-raises the
    same exception object, traceback intact. Exception messages often quote what failed
    (``password=...`` in a DSN, a bearer token): ``error_message`` is one of the free-text
    fields the handler's redaction scrubs (``redact.FREE_TEXT_KEYS``), as the message is.
    ``request`` and ``background_tasks`` arguments are passed through untouched (logging does
    not block, so nothing is deferred to a background task); a ``request=`` argument fills
    ip, user agent, method and path when no ``ActivityContextMiddleware`` set them. When the
    logger is disabled for the level, the wrapper adds one ``isEnabledFor`` check.
    Generator functions are not supported (the activity would be logged at creation).
    """
    if callable(activity_type) and not isinstance(activity_type, str):
        func = activity_type
        return log_activity(func.__name__)(func)
    options = {
        "activity_type": str(activity_type), "description": description,
        "target_type": target_type, "logger": logger, "target_id": target_id,
        "target_id_arg": target_id_arg, "severity": severity, "error_severity": error_severity,
        "actor_type": actor_type, "actor_id": actor_id, "metadata": metadata,
        "changes": changes, "log_errors": log_errors, "fields": fields,
    }

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        spec = _Spec(func, **options)
        log = spec.log
        if inspect.iscoroutinefunction(func):
            async_func = cast(Callable[P, Awaitable[Any]], func)

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                try:
                    result = await async_func(*args, **kwargs)
                except Exception as exc:
                    if spec.log_errors and log.isEnabledFor(spec.error_level):
                        spec.emit(args, kwargs, error=exc)
                    raise
                if log.isEnabledFor(spec.success_level):
                    spec.emit(args, kwargs, result=result)
                return result

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                result = func(*args, **kwargs)
            except Exception as exc:
                if spec.log_errors and log.isEnabledFor(spec.error_level):
                    spec.emit(args, kwargs, error=exc)
                raise
            if log.isEnabledFor(spec.success_level):
                spec.emit(args, kwargs, result=result)
            return result

        return wrapper

    return decorate

