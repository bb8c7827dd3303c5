"""The approvers' dashboard: aggregate figures in a constant number of queries.

Every figure is one aggregate query (or one ``values_list`` of two timestamps), so the
page costs the same whether there are ten requests or a hundred thousand. The weekly
chart is server-rendered SVG: no script, no CDN.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import date
from datetime import datetime
from datetime import timedelta
from html import escape

from django.db.models import Count
from django.db.models.functions import TruncWeek

from .models import RelayRequest
from .models import RequestState
from .selectors import QUEUE_STATES

__all__ = ["Dashboard", "dashboard_data", "weekly_chart_svg"]

AGE_BUCKETS = (("< 1 day", 0, 1), ("1-7 days", 1, 7), ("> 7 days", 7, None))


@dataclass(frozen=True)
class Dashboard:
    open_by_state: dict[str, dict[str, int]]  # state -> bucket -> count
    median_decision_hours: float | None
    decided_count: int
    active_by_team: list[tuple[str, int]]
    upcoming_recertifications: list[RelayRequest]
    drifted: list[RelayRequest]
    weeks: list[tuple[date, int]]


def _open_by_state(now: datetime) -> dict[str, dict[str, int]]:
    out = {state: {label: 0 for label, *_ in AGE_BUCKETS} for state in QUEUE_STATES}
    rows = RelayRequest.objects.filter(state__in=QUEUE_STATES).values_list(
        "state", "submitted_at", "created_at")
    for state, submitted, created in rows.iterator(chunk_size=5000):
        days = (now - (submitted or created)).total_seconds() / 86400
        for label, low, high in AGE_BUCKETS:
            if days >= low and (high is None or days < high):
                out[state][label] += 1
                break
    return out


def _median_decision_hours() -> tuple[float | None, int]:
    spans = [
        (decided - submitted).total_seconds() / 3600
        for submitted, decided in RelayRequest.objects.filter(
            submitted_at__isnull=False, decided_at__isnull=False
        ).values_list("submitted_at", "decided_at").iterator(chunk_size=5000)
    ]
    return (statistics.median(spans) if spans else None), len(spans)


def _weeks(now: datetime, count: int = 12) -> list[tuple[date, int]]:
    this_monday = (now - timedelta(days=now.weekday())).date()
    first = this_monday - timedelta(weeks=count - 1)
    counts = {
        row["week"].date() if isinstance(row["week"], datetime) else row["week"]: row["n"]
        for row in RelayRequest.objects.filter(created_at__date__gte=first)
        .annotate(week=TruncWeek("created_at")).values("week").annotate(n=Count("pk"))
    }
    return [(first + timedelta(weeks=i), counts.get(first + timedelta(weeks=i), 0))
            for i in range(count)]


def dashboard_data(now: datetime) -> Dashboard:
    median, decided = _median_decision_hours()
    active = RelayRequest.objects.filter(state=RequestState.ACTIVE)
    return Dashboard(
        open_by_state=_open_by_state(now),
        median_decision_hours=median,
        decided_count=decided,
        active_by_team=list(
            active.values_list("team__slug").annotate(n=Count("pk")).order_by("-n", "team__slug")
        ),
        upcoming_recertifications=list(
            active.filter(recertify_by__lte=(now + timedelta(days=30)).date())
            .select_related("team").order_by("recertify_by", "pk")[:100]
        ),
        drifted=list(active.filter(drifted_at__isnull=False).select_related("team")
                     .order_by("drifted_at", "pk")[:100]),
        weeks=_weeks(now),
    )


def weekly_chart_svg(weeks: list[tuple[date, int]], *, width: int = 600,
                     height: int = 180) -> str:
    """A bar chart of requests per week as inline SVG, labelled for screen readers."""
    top = max([n for _, n in weeks] + [1])
    bar_w = width / max(len(weeks), 1)
    plot_h = height - 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-labelledby="chart-title chart-desc" class="dash-chart">',
        '<title id="chart-title">Requests per week</title>',
        '<desc id="chart-desc">' + escape(", ".join(
            f"week of {start:%Y-%m-%d}: {n}" for start, n in weeks)) + "</desc>",
    ]
    for i, (start, n) in enumerate(weeks):
        h = round(plot_h * n / top)
        x = round(i * bar_w + 4)
        y = 20 + plot_h - h
        parts.append(
            f'<g><rect x="{x}" y="{y}" width="{round(bar_w - 8)}" height="{h}" '
            f'fill="#2456c8"><title>{escape(f"{start:%Y-%m-%d}: {n}")}</title></rect>'
            f'<text x="{x + round(bar_w / 2) - 4}" y="{y - 4}" font-size="11">{n}</text>'
            f'<text x="{x}" y="{height - 4}" font-size="10">{start:%m-%d}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
