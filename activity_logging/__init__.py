"""activity_logging: a non-blocking, loss-free audit trail on the standard ``logging`` module.

Public names are imported lazily on first use (``from activity_logging import X`` works as
usual), so configuring a handler does not import Starlette, SQLAlchemy or asyncpg.

The names of the design this library implements are aliases of the same objects, not
copies: ``AsyncActivityLogger`` is ``helpers.ActivityLogger``, ``ActivityLogWorker`` is
``ActivityWorker`` and ``CleanupTasks`` is ``scheduler.MaintenanceScheduler``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "ActivityContextMiddleware": "middleware",
    "ActivityHandler": "handler",
    "ActivityJsonFormatter": "formatter",
    "ActivityLogCRUD": "crud",
    "ActivityLogWorker": "worker",
    "ActivityLoggingError": "exceptions",
    "ActivityType": "constants",
    "ActivityWSGIMiddleware": "wsgi",
    "ActivityWorker": "worker",
    "AsyncActivityLogger": "helpers",
    "CleanupTasks": "scheduler",
    "ConfigurationError": "exceptions",
    "ContextFilter": "context",
    "Severity": "constants",
    "activity_context": "context",
    "activity_log_crud": "crud",
    "activity_logger": "helpers",
    "bind_context": "context",
    "changes_between": "changes",
    "flush_handlers": "handler_lifecycle",
    "get_context": "context",
    "level_to_severity": "levels",
    "log_activity": "decorators",
    "log_agent_activity": "helpers",
    "log_call_activity": "helpers",
    "log_lead_activity": "helpers",
    "log_system_event": "helpers",
    "log_user_activity": "helpers",
    "read_engine": "db",
    "reset_context": "context",
    "severity_to_level": "levels",
}

#: Exported names bound to an object of another name in their module (the design's names).
_ALIASES: dict[str, str] = {
    "ActivityLogWorker": "ActivityWorker",
    "AsyncActivityLogger": "ActivityLogger",
    "CleanupTasks": "MaintenanceScheduler",
}

__all__ = [
    "ActivityContextMiddleware",
    "ActivityHandler",
    "ActivityJsonFormatter",
    "ActivityLogCRUD",
    "ActivityLogWorker",
    "ActivityLoggingError",
    "ActivityType",
    "ActivityWSGIMiddleware",
    "ActivityWorker",
    "AsyncActivityLogger",
    "CleanupTasks",
    "ConfigurationError",
    "ContextFilter",
    "Severity",
    "__version__",
    "activity_context",
    "activity_log_crud",
    "activity_logger",
    "bind_context",
    "changes_between",
    "flush_handlers",
    "get_context",
    "level_to_severity",
    "log_activity",
    "log_agent_activity",
    "log_call_activity",
    "log_lead_activity",
    "log_system_event",
    "log_user_activity",
    "read_engine",
    "reset_context",
    "severity_to_level",
]

assert set(__all__) == {*_EXPORTS, "__version__"}  # keeps the two lists in step

if TYPE_CHECKING:
    from .changes import changes_between
    from .constants import ActivityType, Severity
    from .context import ContextFilter, activity_context, bind_context, get_context, reset_context
    from .crud import ActivityLogCRUD, activity_log_crud
    from .db import read_engine
    from .decorators import log_activity
    from .exceptions import ActivityLoggingError, ConfigurationError
    from .formatter import ActivityJsonFormatter
    from .handler import ActivityHandler
    from .handler_lifecycle import flush_handlers
    from .helpers import ActivityLogger as AsyncActivityLogger
    from .helpers import (
        activity_logger,
        log_agent_activity,
        log_call_activity,
        log_lead_activity,
        log_system_event,
        log_user_activity,
    )
    from .levels import level_to_severity, severity_to_level
    from .middleware import ActivityContextMiddleware
    from .scheduler import MaintenanceScheduler as CleanupTasks
    from .worker import ActivityWorker
    from .worker import ActivityWorker as ActivityLogWorker
    from .wsgi import ActivityWSGIMiddleware


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'activity_logging' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), _ALIASES.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
