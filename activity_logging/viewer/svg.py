"""Geometry of the summary page's charts: pure arithmetic, no markup.

The templates draw these shapes as inline SVG (autoescaped like everything else, styled by
the static CSS through classes, so the strict Content-Security-Policy needs no inline style).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

#: Longest category label drawn beside a horizontal bar; the full text is in its tooltip.
MAX_LABEL_CHARS: Final = 28


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar: its rectangle, what it counts, and the listing it links to."""

    x: float
    y: float
    width: float
    height: float
    label: str
    value: int
    href: str
    #: ``label`` cut to fit beside the bar (horizontal charts).
    short_label: str = ""


@dataclass(frozen=True, slots=True)
class Tick:
    """An axis label at ``(x, y)``."""

    x: float
    y: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    """A chart's size, plot area (``left``, ``top``, ``right``, ``bottom``), bars and ticks."""

    width: int
    height: int
    left: float
    top: float
    right: float
    bottom: float
    bars: tuple[Bar, ...]
    x_ticks: tuple[Tick, ...]
    value_ticks: tuple[Tick, ...]
    maximum: int


def nice_scale(maximum: int, *, steps: int = 4) -> tuple[int, int]:
    """``(top, step)``: the smallest "round" axis top (1, 2 or 5 times a power of ten per step)
    at or above ``maximum``, divided into at most ``steps`` steps. ``maximum <= 0`` gives (1, 1).
    """
    if maximum <= 0:
        return 1, 1
    raw = maximum / steps
    magnitude = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    for factor in (1, 2, 5, 10):
        step = max(1, int(factor * magnitude))
        if step * steps >= maximum:
            return step * math.ceil(maximum / step), step
    step = int(10 * magnitude)  # pragma: no cover - the loop ends at factor 10
    return step * math.ceil(maximum / step), step


def _fmt(value: float) -> float:
    return round(value, 1)


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "…"


def column_chart(
    points: Sequence[tuple[str, int, str]],
    *,
    width: int = 900,
    height: int = 220,
    max_x_labels: int = 10,
) -> Chart:
    """Vertical bars for ``(label, value, href)`` points in order (the per-day chart).

    At most ``max_x_labels`` labels under the axis, evenly spaced from the first point.
    """
    # The right margin fits half an x label: the last one may sit on the last bar.
    left, top, right, bottom = 48.0, 12.0, float(width - 36), float(height - 28)
    maximum = max((value for _, value, _ in points), default=0)
    scale_top, step = nice_scale(maximum)
    slot = (right - left) / max(len(points), 1)
    gap = min(2.0, slot * 0.2)
    bars = []
    for i, (label, value, href) in enumerate(points):
        bar_height = (bottom - top) * value / scale_top
        bars.append(Bar(
            x=_fmt(left + i * slot + gap / 2), y=_fmt(bottom - bar_height),
            width=_fmt(max(slot - gap, 1.0)), height=_fmt(bar_height),
            label=label, value=value, href=href,
        ))
    every = max(1, math.ceil(len(points) / max_x_labels))
    x_ticks = tuple(
        Tick(_fmt(left + (i + 0.5) * slot), bottom + 16, label)
        for i, (label, _, _) in enumerate(points)
        if i % every == 0
    )
    value_ticks = tuple(
        Tick(left - 6, _fmt(bottom - (bottom - top) * v / scale_top), f"{v:,}")
        for v in range(0, scale_top + 1, step)
    )
    return Chart(width, height, left, top, right, bottom, tuple(bars), x_ticks, value_ticks,
                 maximum)


def bar_chart(
    points: Sequence[tuple[str, int, str]],
    *,
    width: int = 900,
    bar_height: int = 18,
) -> Chart:
    """Horizontal bars for ``(label, value, href)`` points, top to bottom (the per-type chart).

    Labels are drawn left of the axis, cut to ``MAX_LABEL_CHARS``; values right of each bar.
    """
    left, top, right = 210.0, 4.0, float(width - 70)
    row = bar_height + 6
    height = int(top * 2 + row * max(len(points), 1) + 18)
    bottom = float(height - 18)
    maximum = max((value for _, value, _ in points), default=0)
    scale_top, step = nice_scale(maximum)
    bars = tuple(
        Bar(
            x=left, y=_fmt(top + i * row + 3), width=_fmt((right - left) * value / scale_top),
            height=float(bar_height), label=label, value=value, href=href,
            short_label=_short(label),
        )
        for i, (label, value, href) in enumerate(points)
    )
    value_ticks = tuple(
        Tick(_fmt(left + (right - left) * v / scale_top), bottom + 14, f"{v:,}")
        for v in range(0, scale_top + 1, step)
    )
    return Chart(width, height, left, top, right, bottom, bars, (), value_ticks, maximum)


__all__ = ["MAX_LABEL_CHARS", "Bar", "Chart", "Tick", "bar_chart", "column_chart", "nice_scale"]
