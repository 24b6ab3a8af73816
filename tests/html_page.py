"""A page as a test reads it: the start tags with their attributes, and the text.

Parsed with the stdlib ``html.parser``, so the viewer tests check elements and attributes
(which rows, which links, whether any script or handler exists), not substrings of markup.
"""

from __future__ import annotations

import uuid
from html.parser import HTMLParser


class Page(HTMLParser):
    """A parsed page: every start tag with its attributes, and the text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.texts: list[str] = []
        #: The document's title (the text of its ``<title>``).
        self.title = ""
        self._in_title = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self._in_title:
            self.title += data

    @property
    def text(self) -> str:
        """All the text of the page, as a reader sees it (entities decoded)."""
        return "".join(self.texts)

    def row_ids(self) -> list[uuid.UUID]:
        """The activity ids of the listing's rows, in page order."""
        return [uuid.UUID(a["data-id"]) for t, a in self.tags if t == "tr" and "data-id" in a]

    def links(self, rel: str | None = None, cls: str | None = None) -> list[str]:
        """The ``href`` of every link, optionally only those with ``rel`` or class ``cls``."""
        return [a["href"] for t, a in self.tags if t == "a" and "href" in a
                and (rel is None or a.get("rel") == rel)
                and (cls is None or cls in a.get("class", "").split())]

    def elements(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        """The attributes of every ``tag`` element, optionally only those of class ``cls``."""
        return [a for t, a in self.tags
                if t == tag and (cls is None or cls in a.get("class", "").split())]


def assert_inert(page: Page) -> None:
    """Nothing on ``page`` can run or load from elsewhere: no script, frame, image or style
    element, no event-handler or style attribute, every link a path into the same site."""
    for tag, attrs in page.tags:
        assert tag not in ("script", "iframe", "object", "embed", "img", "base", "style"), tag
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert name != "style", tag
            if name in ("href", "action", "src"):
                assert value.startswith("/") and not value.startswith("//"), value
