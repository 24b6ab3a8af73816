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
