"""The audit viewer in a real browser: headless Chromium against ``activity-logging serve``.

``serve`` runs as a real process on a free port over a seeded SQLite file; Chromium is
driven from the command line (``--dump-dom`` gives the DOM after the page ran, ``--screenshot``
what a person would see), signing in with HTTP Basic credentials in the URL, as a person
would type them at the browser's prompt. The screenshots go to a directory the run prints
(``ACTIVITY_LOG_SCREENSHOT_DIR`` to choose it); ``ACTIVITY_LOG_UPDATE_DOCS_SCREENSHOT=1``
also copies the list page to docs/viewer.png.

Chromium is the Debian ``chromium`` package (``.ci/run`` installs it): missing, these tests
skip locally and fail under CI.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.crud_rows import make_rows, reference, seed
from tests.html_page import Page, assert_inert
from tests.services import IN_CI

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "browser-test-token-0123456789"
TITLE_MARK = "pwned"
#: Each payload, if it ever ran, would leave a mark the dumped DOM shows.
XSS_SCRIPT = f"<script>document.title='{TITLE_MARK}'</script>"
XSS_IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">"
XSS_SVG = "<svg onload=\"document.body.setAttribute('data-pwned','svg')\"></svg>"
START_TIMEOUT = 60.0
BROWSER_TIMEOUT = 90.0


# --- the browser ------------------------------------------------------------------------------


def find_chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.access("/usr/bin/chromium", os.X_OK):
        found = "/usr/bin/chromium"
    return found


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        message = "headless Chromium is not installed (apt-get install -y chromium)"
        if IN_CI:
            pytest.fail(message + "; CI is set: the viewer's browser tests must run")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("ACTIVITY_LOG_SCREENSHOT_DIR")
    directory = Path(chosen) if chosen else tmp_path_factory.mktemp("viewer-screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    print(f"\nviewer screenshots: {directory}")
    return directory


@dataclass
class Browser:
    """Headless Chromium, one process per page, sharing a throwaway profile."""

    executable: str
    profile: Path
    screenshots: Path

    def visit(self, url: str, shot: str | None = None, *, size: str = "1280,900") -> Page:
        """Load ``url``, let it run, and return the DOM it ended with (and save a screenshot
        named ``shot``)."""
        done = self.run(url, shot, size=size)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip(), f"Chromium returned no DOM for {url}: {done.stderr[-2000:]}"
        if shot is not None:
            png = self.screenshots / (shot + ".png")
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return Page(done.stdout)

    def run(self, url: str, shot: str | None = None, *, size: str = "1280,900"
            ) -> subprocess.CompletedProcess[str]:
        """One Chromium process loading ``url``: its exit status, the DOM and its log."""
        args = [
            self.executable, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={self.profile}", f"--window-size={size}",
            # lets timers and pending loads (an <img> error, say) run before the dump
            "--virtual-time-budget=2000", "--dump-dom",
        ]
        if shot is not None:
            args.append(f"--screenshot={self.screenshots / (shot + '.png')}")
        return subprocess.run([*args, url], capture_output=True, text=True,
                              timeout=BROWSER_TIMEOUT, check=False)


@pytest.fixture(scope="module")
def browser(chromium: str, screenshots: Path, tmp_path_factory: pytest.TempPathFactory) -> Browser:
    return Browser(chromium, tmp_path_factory.mktemp("chromium-profile"), screenshots)


# --- the server -------------------------------------------------------------------------------


@dataclass
class Served:
    """A running ``serve``: where it listens, what it holds, how to sign in."""

    base: str
    rows: list[dict[str, Any]]
    process: subprocess.Popen[bytes]
    stderr: Path

    def url(self, path: str, *, token: str | None = TOKEN) -> str:
        """``path`` on the server, with Basic credentials (any user name, the token)."""
        if token is None:
            return self.base + path
        return self.base.replace("http://", f"http://viewer:{token}@", 1) + path


def callcenter_rows(now: datetime) -> list[dict[str, Any]]:
    """A day of a small call centre: calls ringing and answered, leads edited, logins; plus
    one record carrying script payloads where clients control the values."""
    rows = make_rows(40, start=now - timedelta(days=5), step=timedelta(hours=3))
    agents = [("agent", "alice"), ("agent", "bob"), ("user", "carol"), ("system", "scheduler")]
    for i, row in enumerate(rows):
        actor = agents[i % len(agents)]
        call = f"call-{1001 + i % 5}"  # each call sees every kind of change below
        row.update(
            actor_type=actor[0], actor_id=actor[1], target_type="call", target_id=call,
            request_id=f"req-{i // 3:04d}", path=f"/calls/{call}", http_method="PATCH",
            user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
            ip_address=f"10.0.0.{1 + i % 5}",
        )
        kind = i % 4
        if kind == 0:
            row.update(activity_type="call_created", description=f"inbound call {call} queued",
                       changes={"status": {"old": None, "new": "ringing"},
                                "queue": {"old": None, "new": "sales"}})
        elif kind == 1:
            row.update(activity_type="call_answered", description=f"{actor[1]} answered {call}",
                       changes={"status": ["ringing", "answered"]})
        elif kind == 2:
            row.update(activity_type="call_ended", description=f"{call} ended after 4 min",
                       changes={"status": {"old": "answered", "new": "ended"},
                                "duration_s": {"old": None, "new": 240}})
        else:
            row.update(activity_type="agent_login", description=f"{actor[1]} signed in",
                       target_type=None, target_id=None, changes=None)
    xss = rows[-1]
    xss.update(
        activity_type="profile_updated", description=f"display name set to {XSS_IMG}",
        actor_type="user", actor_id="mallory", target_type="user", target_id=XSS_SVG,
        user_agent=XSS_SCRIPT, request_id="req-xss",
        changes={"display_name": {"old": "Mallory", "new": XSS_IMG},
                 "bio": [XSS_SCRIPT, XSS_SVG]},
    )
    return rows


def start_serve(database_url: str, stderr: Path, *, token: str | None) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``activity-logging serve --port 0`` and wait for the URL it announces."""
    env = dict(os.environ)
    env.pop("ACTIVITY_LOG_VIEWER_TOKEN", None)
    if token is not None:
        env["ACTIVITY_LOG_VIEWER_TOKEN"] = token
    with open(stderr, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "activity_logging", "serve", "--host", "127.0.0.1",
             "--port", "0", "--database-url", database_url],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = re.search(r"read-only at (http://127\.0\.0\.1:\d+)/", stderr.read_text())
        if found and "Application startup complete" in stderr.read_text():
            return process, found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    stop(process)
    pytest.fail(f"serve did not start: {stderr.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM (a graceful stop), then wait; kill only if it does not stop. The exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("viewer-served")
    rows = callcenter_rows(datetime.now(UTC).replace(microsecond=0))
    database_url = f"sqlite:///{directory / 'activity_logs.db'}"
    import asyncio

    asyncio.run(seed(database_url, rows))
    stderr = directory / "serve.stderr"
    process, base = start_serve(database_url, stderr, token=TOKEN)
    yield Served(base, rows, process, stderr)
    code = stop(process)
    # uvicorn ends a graceful shutdown by re-raising the signal that asked for it
    assert code == -signal.SIGTERM, f"serve exited {code}: {stderr.read_text()[-2000:]}"
    assert "Application shutdown complete" in stderr.read_text()


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, \
                response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode()


# --- what a person sees -------------------------------------------------------------------------


def test_the_list_page_shows_the_newest_rows(served: Served, browser: Browser) -> None:
    page = browser.visit(served.url("/"), "list")
    want = [r["id"] for r in reference(served.rows)]
    assert page.row_ids() == want[:50]
    assert "Activity" in page.text and "alice" in page.text and "inbound call" in page.text
    if os.environ.get("ACTIVITY_LOG_UPDATE_DOCS_SCREENSHOT") == "1":
        browser.visit(served.url("/?actor_type=agent"), "docs", size="1200,760")
        shutil.copyfile(browser.screenshots / "docs.png", ROOT / "docs" / "viewer.png")


def test_a_filter_applied_shows_only_the_matching_rows(served: Served, browser: Browser) -> None:
    page = browser.visit(served.url("/?actor_id=bob&severity=info&severity=warning"), "filtered")
    want = reference(served.rows, actor_id="bob", severity=["info", "warning"])
    assert want and len(want) < len(served.rows)
    assert page.row_ids() == [r["id"] for r in want]
    actor_box = next(a for a in page.elements("input") if a.get("name") == "actor_id")
    assert actor_box["value"] == "bob"
    checked = {a["value"] for a in page.elements("input") if "checked" in a}
    assert checked == {"info", "warning"}


def test_a_target_history_shows_each_change_as_old_to_new(served: Served, browser: Browser) -> None:
    page = browser.visit(served.url("/target?target_type=call&target_id=call-1001"), "target-history")
    want = reference(served.rows, target_type="call", target_id="call-1001")
    assert page.row_ids() == [r["id"] for r in want] and want
    assert "History of call call-1001" in page.text
    diffs = re.findall(r"status\s*(\S+)\s*\u2192\s*(\S+)", page.text)
    expected = []
    for row in want:
        status = row["changes"]["status"] if row["changes"] else None
        if status is not None:
            old, new = (status["old"], status["new"]) if isinstance(status, dict) else status
            expected.append(("null" if old is None else old, new))
    assert diffs == expected and ("ringing", "answered") in diffs  # a [old, new] pair too


def test_links_lead_to_the_actor_timeline_and_the_request_drill_down(
    served: Served, browser: Browser
) -> None:
    listing = browser.visit(served.url("/"))
    actor_link = next(h for h in listing.links(cls="actor") if "alice" in h)
    request_link = listing.links(cls="request")[-1]
    timeline = browser.visit(served.url(actor_link), "actor-timeline")
    assert timeline.row_ids() == [r["id"] for r in reference(served.rows, actor_id="alice")]
    assert timeline.elements("tr", "day")
    request_id = request_link.split("request_id=", 1)[1]
    drill = browser.visit(served.url(request_link), "request")
    assert drill.row_ids() == [r["id"] for r in reference(served.rows, desc=False,
                                                          request_id=request_id)]
    assert "PATCH" in drill.text


def test_the_summary_page_draws_activity_per_day_and_per_type(served: Served, browser: Browser) -> None:
    page = browser.visit(served.url("/summary?days=7"), "summary")
    assert len(page.elements("svg")) == 2
    assert len(page.elements("rect", "bar")) == 7 + len({r["activity_type"] for r in served.rows})
    assert f"{len(served.rows)} activities" in page.text


def test_an_xss_payload_is_shown_as_text_and_never_runs(served: Served, browser: Browser) -> None:
    xss = next(r for r in served.rows if r["request_id"] == "req-xss")
    pages = {
        "detail": browser.visit(served.url(f"/activity/{xss['id']}"), "activity-detail"),
        "list": browser.visit(served.url("/?actor_id=mallory")),
        "request": browser.visit(served.url("/request?request_id=req-xss")),
    }
    for name, page in pages.items():
        assert "data-pwned" not in page.elements("body")[0], name
        assert page.title.endswith("Activity log") and TITLE_MARK not in page.title, name
        assert XSS_SCRIPT in page.text, name  # there, as text
        assert_inert(page)
    shown = pages["detail"].text
    for payload in (XSS_SCRIPT, XSS_IMG, XSS_SVG):
        assert payload in shown


def test_the_xss_check_sees_a_payload_that_runs(browser: Browser, tmp_path: Path) -> None:
    """Control: the same payloads on a page that neither escapes them nor forbids scripts
    leave their marks in the dumped DOM, so the test above would see them."""
    unsafe = tmp_path / "unsafe.html"
    unsafe.write_text(f"<html><head><title>ok</title></head><body>{XSS_SCRIPT}{XSS_IMG}</body></html>")
    page = browser.visit(unsafe.as_uri())
    assert page.elements("body")[0].get("data-pwned") == "img"
    assert page.title == TITLE_MARK


# --- who may look ---------------------------------------------------------------------------------


def test_anonymous_and_wrong_credentials_are_refused(served: Served, browser: Browser) -> None:
    for path in ("/", "/summary", "/export.csv", "/static/viewer.css", f"/activity/{uuid.uuid4()}"):
        status, headers, body = http_get(served.url(path, token=None))
        assert status == 401, path
        assert headers["www-authenticate"].startswith("Basic ")
        assert "alice" not in body
    status, _, _ = http_get(served.base + "/", {"Authorization": "Bearer not-the-token-at-all"})
    assert status == 401
    status, _, body = http_get(served.base + "/", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and "alice" in body
    # Headless Chromium ends a load it cannot sign in to as a failed load, with no page.
    for url in (served.url("/", token=None), served.url("/", token="wrong-token-but-long-enough")):
        refused = browser.run(url)
        assert "ERR_INVALID_AUTH_CREDENTIALS" in refused.stderr
        assert Page(refused.stdout).row_ids() == [] and "alice" not in refused.stdout


def test_serve_without_a_token_makes_one_for_the_run_and_requires_it(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'one.db'}"
    import asyncio

    asyncio.run(seed(database_url, make_rows(3)))
    stderr = tmp_path / "serve.stderr"
    process, base = start_serve(database_url, stderr, token=None)
    try:
        said = re.search(r"this run's token is (\S+)", stderr.read_text())
        assert said, stderr.read_text()
        assert http_get(base + "/")[0] == 401
        assert http_get(base + "/", {"Authorization": f"Bearer {said.group(1)}"})[0] == 200
    finally:
        assert stop(process) == -signal.SIGTERM
