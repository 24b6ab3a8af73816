"""The ASGI ``lifespan`` scope under ``ActivityContextMiddleware``: flush before the server exits.

uvicorn re-raises SIGTERM once the lifespan has completed, so ``logging.shutdown()`` never
runs and whatever the activity handlers still hold would die with the process. So
``lifespan.shutdown.complete`` (or ``.failed``) reaches the server only after every
``ActivityHandler`` of the process has been flushed (``handler_lifecycle.flush_handlers``, in a worker
thread: the event loop keeps running). An app that refuses the lifespan scope (raises
before asking for its first message, as Django does) gets a minimal lifespan instead, which
only does that flush.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Final

from ._internal import reporter

if TYPE_CHECKING:
    from .middleware import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SHUTDOWN_MESSAGES", "flush_at_shutdown", "run_lifespan"]

#: Lifespan messages after which the server may end the process without ``logging.shutdown``.
SHUTDOWN_MESSAGES: Final = frozenset({"lifespan.shutdown.complete", "lifespan.shutdown.failed"})
_HANDLER_MODULE: Final = __name__.rpartition(".")[0] + ".handler"


async def run_lifespan(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, flush_timeout: float | None
) -> None:
    """Run ``app``'s lifespan; shutdown messages reach the server after the flush.

    Exceptions from a lifespan the app ran propagate unchanged (the server must see them);
    the flush itself never raises.
    """
    spoke = started = flushed = False

    async def receive_watched() -> Message:
        nonlocal spoke
        spoke = True
        return await receive()

    async def send_after_flush(message: Message) -> None:
        nonlocal spoke, started, flushed
        spoke = True
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            started = True
        elif kind in SHUTDOWN_MESSAGES:
            flushed = True
            await flush_at_shutdown(flush_timeout)
        await send(message)

    try:
        await app(scope, receive_watched, send_after_flush)
    except Exception:
        if not spoke:
            # Refusing the scope before reading a message is how an ASGI app says it
            # has no lifespan (Django does). The server would then skip the lifespan and,
            # on SIGTERM, end the process with the handlers still holding records.
            await _minimal_lifespan(receive, send, flush_timeout)
            return
        if started and not flushed:
            # raised past startup without a shutdown message: the server may end the
            # process as soon as it sees the error
            await flush_at_shutdown(flush_timeout)
        raise  # a lifespan that ran and failed: the server must see it unchanged


async def _minimal_lifespan(receive: Receive, send: Send, flush_timeout: float | None) -> None:
    """The lifespan of an app without one: startup completes at once, shutdown flushes."""
    while True:
        kind = (await receive()).get("type")
        if kind == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            await flush_at_shutdown(flush_timeout)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def flush_at_shutdown(flush_timeout: float | None) -> None:
    """``flush_handlers(flush_timeout)`` off the event loop. Never raises.

    Cancellation still propagates (the flush thread then finishes on its own, bounded).
    """
    if _HANDLER_MODULE not in sys.modules:
        return  # no ActivityHandler was ever built here: nothing to flush, nothing to import
    try:
        from .handler_lifecycle import flush_handlers

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            done = flush_handlers(flush_timeout)  # not asyncio (trio): blocking beats losing records
        else:
            done = await asyncio.to_thread(flush_handlers, flush_timeout)
        if not done:
            reporter.report(
                "middleware.shutdown", "the activity handlers did not finish flushing before "
                "the lifespan shutdown completed: records still queued may be lost")
    except Exception as exc:
        reporter.report("middleware.shutdown",
                        "could not flush the activity handlers at shutdown", exc)
