"""Process lifecycles of ``ActivityHandler``: exit, fork, multiprocessing, ``dictConfig``.

What happens to the handlers of a process when it ends or splits, in one place:
``flush_handlers`` (the one call for servers that exit without ``logging.shutdown()``),
the ``atexit`` wait for handlers a ``dictConfig`` closed in the background, the
multiprocessing finalizer (children end with ``os._exit``), the after-fork restart, and
the recovery of arguments some Python 3.12 releases' ``dictConfig`` drops.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
import weakref
from typing import TYPE_CHECKING, Any, Final

from ._internal import reporter

if TYPE_CHECKING:
    from .handler import ActivityHandler

#: Every open handler of this process (weakly: a handler nobody holds is closed by logging).
live_handlers: weakref.WeakSet[ActivityHandler] = weakref.WeakSet()


def flush_handlers(timeout: float | None = None) -> bool:
    """Flush every open ``ActivityHandler`` of this process; True when all of them finished.

    The one line to call where a process is about to end without ``logging.shutdown()``
    (a server that re-raises SIGTERM, a gunicorn ``worker_exit`` hook, a Celery
    ``worker_process_shutdown`` signal). ``timeout`` (default: each handler's
    ``close_timeout``) bounds the whole call, not each handler. Never raises; thread-safe.
    """
    try:
        handlers = list(live_handlers)
        if timeout is None:
            timeout = max((h.close_timeout for h in handlers), default=0.0)
        deadline = time.monotonic() + max(0.0, timeout)
        ok = True
        for handler in handlers:
            ok = handler.flush(max(0.0, deadline - time.monotonic())) and ok
        return ok
    except Exception as exc:
        reporter.report("flush", "flush_handlers failed", exc)
        return False


_DICTCONFIG_QUEUE_KEYS: Final = frozenset({"queue", "listener", "handlers", "respect_handler_level"})


def arguments_dropped_by_dictconfig() -> dict[str, Any] | None:
    """The arguments a Python 3.12 ``dictConfig`` dropped, if it is the caller.

    Some 3.12 releases (3.12.1 here) build a ``QueueHandler`` subclass of the ``"class"``
    form as ``klass(queue)``, silently dropping every other configured argument (later
    releases pass them). The configured arguments are still in that function's frame:
    taking them from there makes the documented form work instead of running with defaults.
    """
    try:
        frame = sys._getframe(2)  # ActivityHandler.__init__ <- _configure_queue_handler
        if frame.f_code.co_name != "_configure_queue_handler" or "logging" not in frame.f_code.co_filename:
            return None
        kwargs = frame.f_locals.get("kwargs")
        if not isinstance(kwargs, dict):
            return None
        rest = {k: v for k, v in kwargs.items() if k not in _DICTCONFIG_QUEUE_KEYS}
        return rest or None
    except Exception:
        return None


def holds_logging_lock() -> bool:
    """True when this thread holds the ``logging`` module lock (inside ``dictConfig``)."""
    is_owned = getattr(getattr(logging, "_lock", None), "_is_owned", None)
    try:
        return bool(is_owned()) if is_owned is not None else False
    except Exception:
        return False


def _finish_background_closes() -> None:
    """At exit: wait (bounded) for handlers a ``dictConfig`` closed to finish shipping."""
    for handler in list(live_handlers):
        if handler._closed:
            handler._wait_background_close()


atexit.register(_finish_background_closes)


def _close_all_for_exit() -> None:
    """A multiprocessing child is ending through ``os._exit``: no ``atexit``, no
    ``logging.shutdown()``. Close (deliver or spool) every open handler first."""
    for handler in list(live_handlers):
        handler.close()


class _MultiprocessingToken:
    """What ``multiprocessing.util.register_after_fork`` holds weakly (an ``object()`` cannot be)."""


_MP_TOKEN: Final = _MultiprocessingToken()
_mp_hook_pid = 0


def _arm_multiprocessing_finalizer(_token: object = None) -> None:
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.Finalize(None, _close_all_for_exit, exitpriority=1)


def install_multiprocessing_exit_hook() -> None:
    """Make multiprocessing children (fork, forkserver, spawn) close the handlers at exit.

    A child process ends with ``os._exit`` after running multiprocessing's own finalizers,
    so ``atexit`` never runs there. The finalizer registry is cleared when a child starts and
    the after-fork callbacks are run after that: registering one re-arms the finalizer in
    every child. Only when ``multiprocessing`` is in use: it is never imported for this.
    """
    global _mp_hook_pid
    util = sys.modules.get("multiprocessing.util")
    if util is None or _mp_hook_pid == os.getpid():
        return
    _mp_hook_pid = os.getpid()
    util.register_after_fork(_MP_TOKEN, _arm_multiprocessing_finalizer)
    _arm_multiprocessing_finalizer()


def _reinit_handlers_after_fork() -> None:
    for handler in list(live_handlers):
        if handler._closed:  # closing in the parent (a dictConfig replaced it): the parent ships
            continue
        try:
            handler._after_fork_in_child()
        except Exception as exc:
            reporter.report("fork", "could not restart the handler after fork", exc)
    if live_handlers:
        install_multiprocessing_exit_hook()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_handlers_after_fork)
