"""Standard activity types and severities.

Both are ``enum.StrEnum``: a member *is* its string value, so ``ActivityType.CALL_CREATED``
can be passed anywhere a plain ``"call_created"`` is accepted (helpers, ``extra``, queries),
and the stored column holds the plain string. Applications are free to use other activity
types; these are the ones the library and the call-center example emit.
"""

from __future__ import annotations

import enum
from typing import Final


class ActivityType(enum.StrEnum):
    """Activity types with a meaning shared by the library, the example and the queries."""

    CALL_CREATED = "call_created"
    CALL_UPDATED = "call_updated"
    CALL_ENDED = "call_ended"
    AGENT_STATUS_CHANGED = "agent_status_changed"
    AGENT_LOGIN = "agent_login"
    AGENT_LOGOUT = "agent_logout"
    LEAD_CREATED = "lead_created"
    LEAD_UPDATED = "lead_updated"
    LEAD_CONVERTED = "lead_converted"
    USER_LOGIN = "user_login"
    USER_LOGOUT = "user_logout"
    USER_CREATED = "user_created"
    SYSTEM_STARTUP = "system_startup"
    SYSTEM_SHUTDOWN = "system_shutdown"
    SYSTEM_ERROR = "system_error"
    API_REQUEST = "api_request"
    API_ERROR = "api_error"


class Severity(enum.StrEnum):
    """Stored severities; each maps onto a ``logging`` level (``levels.severity_to_level``)."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


#: Logger the helpers, the decorator and the middleware write to unless told otherwise.
DEFAULT_LOGGER_NAME: Final = "activity"

#: Actor types used by the helpers when they fill in an actor themselves.
ACTOR_USER: Final = "user"
ACTOR_AGENT: Final = "agent"
ACTOR_SYSTEM: Final = "system"
