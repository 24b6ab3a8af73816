"""Request context: contextvars, ``activity_context(...)`` and ``ContextFilter``.

One ``ContextVar`` holds an immutable mapping of the current context (request id, client
ip, user agent, actor, method, path, plus any extra keys). Setting it returns a token and
every setter here resets with that token, so context follows asyncio tasks (each task
copies the context it was created in) and never leaks between concurrent tasks or requests.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType, TracebackType
from typing import Any, Final, ParamSpec, TypeVar, cast

P = ParamSpec("P")
R = TypeVar("R")

CONTEXT_FIELDS: Final = (
    "request_id", "ip_address", "user_agent", "actor_type", "actor_id", "http_method", "path",
)

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
_activity_ctx: ContextVar[Mapping[str, Any]] = ContextVar("activity_logging_context", default=_EMPTY)
# The open ``with activity_context(...)`` entries of the current context, innermost last, each
# with the token its exit resets. One module-level ContextVar for every instance: a ContextVar
# is never freed, so one made per instance leaked (~200 bytes per use).
_open_entries: ContextVar[tuple[tuple[activity_context, Token[Mapping[str, Any]]], ...]] = ContextVar(
    "activity_logging_open_entries", default=()
)


def get_context() -> Mapping[str, Any]:
    """The current context as a read-only mapping (empty outside any context)."""
    return _activity_ctx.get()


current_context = _activity_ctx.get  # the same, without a Python call: for hot paths


def bind_context(**fields: Any) -> Token[Mapping[str, Any]]:
    """Add ``fields`` to the current context; ``None`` values remove a key.

    Returns the token to pass to ``reset_context``. Prefer ``activity_context``, which resets
    for you.
    """
    current = _activity_ctx.get()
    if not current and None not in fields.values():
        return _activity_ctx.set(MappingProxyType(fields))  # the common case: a fresh request
    merged = dict(current)
    for key, value in fields.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return _activity_ctx.set(MappingProxyType(merged))


def reset_context(token: Token[Mapping[str, Any]]) -> None:
    """Restore the context that was current before ``bind_context`` returned ``token``."""
    _activity_ctx.reset(token)


class activity_context:
    """Set context fields for a block, a function, or a coroutine function.

    Usable as ``with activity_context(actor_type="system", actor_id="nightly-job"):``, as
    ``async with``, and as a decorator on sync or async functions. Each entry binds on top
    of the current context and resets with its own token on exit, so it nests and is safe
    to reuse and to run concurrently.
    """

    def __init__(self, **fields: Any) -> None:
        self._fields = fields

    def __enter__(self) -> Mapping[str, Any]:
        token = bind_context(**self._fields)
        _open_entries.set((*_open_entries.get(), (self, token)))
        return _activity_ctx.get()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entries = _open_entries.get()
        # the innermost open entry of this object in this context (with-blocks nest strictly)
        for i in range(len(entries) - 1, -1, -1):
            if entries[i][0] is self:
                _open_entries.set(entries[:i] + entries[i + 1 :])
                reset_context(entries[i][1])
                return

    async def __aenter__(self) -> Mapping[str, Any]:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        fields = self._fields
        if inspect.iscoroutinefunction(func):
            async_func = cast(Callable[P, Awaitable[Any]], func)

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                token = bind_context(**fields)
                try:
                    return await async_func(*args, **kwargs)
                finally:
                    reset_context(token)

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            token = bind_context(**fields)
            try:
                return func(*args, **kwargs)
            finally:
                reset_context(token)

        return wrapper


class ContextFilter(logging.Filter):
    """Copies the current activity context onto each record, never overwriting ``extra``.

    Attach it to the ``ActivityHandler`` (or the logger): filters run in the caller's
    thread, where the contextvars live. Always returns True; never raises.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _activity_ctx.get()
        if ctx:
            attrs = record.__dict__
            for key, value in ctx.items():
                if key not in attrs:
                    attrs[key] = value
        return True
