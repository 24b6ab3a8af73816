"""Exceptions raised by activity_logging.

Nothing here is ever raised into code that merely logs: the handler swallows and counts.
These reach callers that configure the library or run its operations (worker, CLI, queries).
"""

from __future__ import annotations


class ActivityLoggingError(Exception):
    """Base class of every error this library raises."""


class ConfigurationError(ActivityLoggingError, ValueError):
    """An argument or environment value is invalid; the message names it and its value."""


class StoreUnavailableError(ActivityLoggingError):
    """The database or Redis could not be reached."""


class EntryFormatError(ActivityLoggingError, ValueError):
    """A stream entry or spool frame is not in a format this version understands."""


class PermissionDeniedError(ActivityLoggingError):
    """The database refused this role something it needs: a missing privilege (SQLSTATE
    42501) or a refused login (SQLSTATE class 28).

    Retrying cannot help, and the rows are not at fault: the message names the role, what
    it lacks and the fix (usually ``GRANT activity_log_writer TO <role>``, see
    docs/roles.md). The CLI prints it as one line and exits ``EXIT_PERMISSION_DENIED``;
    ``ActivityWorker.run`` raises it (its entries stay pending).
    """


class PartitionMissingError(ActivityLoggingError):
    """A batch holds records of months whose partitions do not exist, and this role may not
    create them (the writer role cannot: partitions are made ahead by the maintenance role).

    A transient condition, not the rows' fault: the worker keeps the entries pending and
    retries until the maintenance side creates the partitions (``activity-logging
    partitions``, ``cleanup``, the scheduler). ``months`` are the ``(year, month)`` pairs
    missing, ``partitions`` their names.
    """

    def __init__(self, message: str, *, months: list[tuple[int, int]],
                 partitions: list[str]) -> None:
        super().__init__(message)
        self.months = months
        self.partitions = partitions
