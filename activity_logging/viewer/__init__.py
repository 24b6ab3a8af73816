"""The audit viewer: a read-only web UI over ``activity_logs`` (optional extra ``viewer``).

Mount it in your own Starlette or FastAPI app::

    from activity_logging.viewer import create_viewer_app

    app.mount("/audit", create_viewer_app(database_url=DATABASE_URL, authorize=is_auditor))

or run it on its own: ``activity-logging serve`` (uvicorn, a bearer token from
``ACTIVITY_LOG_VIEWER_TOKEN``). See docs/viewer.md. Needs Jinja2 (``pip install
'activity_logging[viewer]'``).

Modules, one job each: ``app`` (routes and pages), ``store`` (read-only database access),
``present`` (stored values to text and links, pure), ``svg`` (chart geometry, pure),
``security`` (authorisation and response headers); templates and the stylesheet beside them.
"""

from __future__ import annotations

from .app import create_viewer_app
from .security import TokenAuthorizer

__all__ = ["TokenAuthorizer", "create_viewer_app"]
