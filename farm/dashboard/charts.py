"""ECharts options for the dashboard's charts, built on the server from the pages' data.

A template embeds an option as JSON (``<script type="application/json">``, escaped by ``tojson``);
``static/farm.js`` hands it to the vendored ECharts. A data item with a ``url`` opens that page
when clicked. Text in options (layer names, version labels) is drawn by ECharts as SVG text
nodes, never parsed as HTML.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from farm.dashboard.analysis import BoxStats, Layer
from farm.dashboard.queries import HistoryPoint, JobSummary

PRECISION_COLORS = {
    "fp32": "#3b6fd4",
    "tf32": "#5a8be0",
    "bf16": "#8e5bd6",
    "fp16": "#d1477a",
    "int8": "#e08a1e",
    "best": "#2e9e6a",
}
FALLBACK_COLORS = ["#3b6fd4", "#d1477a", "#e08a1e", "#2e9e6a", "#8e5bd6", "#5f6b7a"]
A_COLOR, B_COLOR = "#3b6fd4", "#e08a1e"
REGRESSED_COLOR, IMPROVED_COLOR = "#d0342c", "#2e9e6a"
TEXT_STYLE = {"fontFamily": "system-ui, -apple-system, Segoe UI, sans-serif", "color": "#1d2330"}


def precision_color(precision: str, index: int = 0) -> str:
    """The colour a precision has in every chart."""
    return PRECISION_COLORS.get(precision, FALLBACK_COLORS[index % len(FALLBACK_COLORS)])


def _base(title: str | None = None) -> dict[str, Any]:
    option: dict[str, Any] = {
        "animation": False,
        "textStyle": TEXT_STYLE,
        "grid": {"left": 70, "right": 30, "top": 50, "bottom": 55, "containLabel": True},
        "tooltip": {"trigger": "item", "confine": True},
        "legend": {"top": 4, "type": "scroll"},
    }
    if title:
        option["title"] = {
            "text": title,
            "left": "center",
            "top": 26,
            "textStyle": {"fontSize": 12, "fontWeight": "normal", "color": "#5a6272"},
        }
    return option


def speed_accuracy(
    cells: Sequence[JobSummary],
    *,
    metric: str,
    metric_label: str,
    higher_is_better: bool,
    front: Sequence[int],
    job_url: Any,
) -> dict[str, Any]:
    """Median latency (x) against an accuracy metric (y): one series per precision, one point per
    job, and the frontier through the points no other beats on both."""
    option = _base()
    series: list[dict[str, Any]] = []
    for index, cell in enumerate(cells):
        value = cell.accuracy.get(metric)
        series.append(
            {
                "name": cell.precision,
                "type": "scatter",
                "symbolSize": 16,
                "itemStyle": {"color": precision_color(cell.precision or "", index)},
                "data": [{"value": [cell.median_ms, value], "url": job_url(cell.id), "name": cell.precision}],
                "label": {"show": True, "position": "right", "formatter": "{a}", "fontSize": 11},
            }
        )
    if front:
        series.append(
            {
                "name": "frontier",
                "type": "line",
                "symbol": "none",
                "lineStyle": {"type": "dashed", "color": "#7a8290"},
                "data": [[cells[i].median_ms, cells[i].accuracy.get(metric)] for i in front],
                "z": 1,
                "tooltip": {"show": False},
            }
        )
    option.update(
        {
            "xAxis": {"type": "value", "name": "median latency (ms) — lower is better", "nameLocation": "middle",
                      "nameGap": 28, "scale": True},
            "yAxis": {"type": "value", "name": metric_label + (" ↑" if higher_is_better else " ↓"),
                      "scale": True, "nameTextStyle": {"align": "left"}},
            "series": series,
        }
    )  # fmt: skip
    return option


def latency_boxes(named: Sequence[tuple[str, BoxStats | None]]) -> dict[str, Any]:
    """One box (Tukey whiskers) per engine from its stored latency samples, outliers as points."""
    option = _base()
    categories = [name for name, _ in named]
    series: list[dict[str, Any]] = []
    for index, (name, stats) in enumerate(named):
        color = A_COLOR if index == 0 else B_COLOR
        data: list[Any] = ["-"] * len(named)  # ECharts' "no value" for the other engines' categories
        if stats is not None:
            data[index] = stats.box()
        series.append(
            {
                "name": name,
                "type": "boxplot",
                "data": data,
                "itemStyle": {"color": color + "33", "borderColor": color, "borderWidth": 1.5},
                "boxWidth": ["30%", "55%"],
            }
        )
    outliers = [[index, value] for index, (_, stats) in enumerate(named) if stats for value in stats.outliers]
    if outliers:
        series.append(
            {
                "name": "outliers",
                "type": "scatter",
                "symbolSize": 5,
                "itemStyle": {"color": "#7a8290", "opacity": 0.6},
                "data": outliers,
            }
        )
    option.update(
        {
            "xAxis": {"type": "category", "data": categories, "axisLabel": {"interval": 0}},
            "yAxis": {"type": "log" if _spread_is_wide(named) else "value", "name": "latency per run (ms)",
                      "scale": True},
            "series": series,
        }
    )  # fmt: skip
    return option


def _spread_is_wide(named: Sequence[tuple[str, BoxStats | None]]) -> bool:
    values = [v for _, s in named if s for v in (s.low_whisker, *s.outliers, s.high_whisker) if v > 0]
    return bool(values) and max(values) / min(values) > 50


def layer_times(
    named: Sequence[tuple[str, Sequence[Layer]]], *, limit: int = 40
) -> tuple[dict[str, Any], int]:
    """Horizontal bars of the tuned time of each layer, one series per engine, the slowest
    ``limit`` layers (by the larger of the engines' times); also the number of layers left out."""
    times: dict[str, dict[str, float | None]] = {}
    order: list[str] = []
    for name, layers in named:
        for layer in layers:
            if layer.node not in times:
                times[layer.node] = {}
                order.append(layer.node)
            times[layer.node][name] = layer.time_ms
    ranked = sorted(order, key=lambda node: -max((t or 0.0) for t in times[node].values()))
    shown = set(ranked[:limit])
    nodes = [node for node in order if node in shown]
    nodes.reverse()  # schedule order from top to bottom in a horizontal bar chart
    option = _base()
    option["grid"] = {"left": 24, "right": 40, "top": 40, "bottom": 40, "containLabel": True}
    option["tooltip"] = {"trigger": "axis", "axisPointer": {"type": "shadow"}, "confine": True}
    option.update(
        {
            "yAxis": {"type": "category", "data": nodes, "axisLabel": {"fontSize": 10, "width": 260,
                      "overflow": "truncate"}},
            "xAxis": {"type": "value", "name": "tuned time (ms)", "nameLocation": "middle", "nameGap": 24},
            "series": [
                {"name": name, "type": "bar", "data": [times[node].get(name) for node in nodes],
                 "itemStyle": {"color": A_COLOR if index == 0 else B_COLOR}, "barMaxWidth": 14}
                for index, (name, _) in enumerate(named)
            ],
        }
    )  # fmt: skip
    return option, len(order) - len(nodes)


def history_chart(points: Sequence[HistoryPoint], *, metric_label: str, job_url: Any) -> dict[str, Any]:
    """A metric across versions: the value, the baseline it was judged against, the noise band
    (95 % interval, latency only), and markers on regressions and improvements. Clicking a point
    opens its job."""
    categories = [f"{p.version_label} · #{p.job_id}" for p in points]
    option = _base()
    option["tooltip"] = {"trigger": "axis", "confine": True}
    series: list[dict[str, Any]] = [
        {
            # the 95 % interval of each judged point, drawn as a thin box from its low to its high end
            "name": "noise band (95% CI)",
            "type": "candlestick",
            "data": [[p.band[0], p.band[1], p.band[0], p.band[1]] if p.band else "-" for p in points],
            "barMaxWidth": 26,
            "itemStyle": {
                "color": "#9db7ea66",
                "color0": "#9db7ea66",
                "borderColor": "#6f93d8",
                "borderColor0": "#6f93d8",
            },
            "tooltip": {"show": False},
        },
        {
            "name": "baseline",
            "type": "line",
            "data": [p.baseline for p in points],
            "lineStyle": {"type": "dashed", "color": "#7a8290"},
            "itemStyle": {"color": "#7a8290"},
            "symbol": "emptyCircle",
            "connectNulls": False,
        },
        {
            "name": "value",
            "type": "line",
            "data": [{"value": p.value, "url": job_url(p.job_id)} for p in points],
            "itemStyle": {"color": A_COLOR},
            "symbolSize": 9,
            "lineStyle": {"width": 2},
        },
        _verdict_markers(points, "regressed", "triangle", REGRESSED_COLOR, job_url),
        _verdict_markers(points, "improved", "diamond", IMPROVED_COLOR, job_url),
    ]
    option.update(
        {
            "legend": {"top": 4, "data": ["value", "baseline", "noise band (95% CI)", "regressed", "improved"]},
            "xAxis": {"type": "category", "data": categories, "name": "version · job", "nameLocation": "middle",
                      "nameGap": 30, "boundaryGap": True},
            "yAxis": _history_axis(points, metric_label),
            "series": series,
        }
    )  # fmt: skip
    return option


def _history_axis(points: Sequence[HistoryPoint], metric_label: str) -> dict[str, Any]:
    """A value axis over the points and baselines (log when they span more than 20×); a noise band
    wider than that range is cut at 1.5× the largest value rather than flatten the line."""
    values = [v for p in points for v in (p.value, p.baseline) if v is not None]
    axis: dict[str, Any] = {"type": "value", "name": metric_label, "scale": True}
    if values and min(values) > 0 and max(values) / min(values) > 20:
        axis["type"] = "log"
    if values and any(p.band for p in points) and max(values) > 0:
        axis["max"] = _round_up(max(values) * 1.5)
    return axis


def _round_up(value: float) -> float:
    """``value`` rounded up to two significant digits (a tidy axis end)."""
    import math

    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return math.ceil(value / scale) * scale


def _verdict_markers(
    points: Sequence[HistoryPoint], outcome: str, symbol: str, color: str, job_url: Any
) -> dict[str, Any]:
    """A scatter series marking the points whose verdict is ``outcome``."""
    return {
        "name": outcome,
        "type": "scatter",
        "symbol": symbol,
        "symbolSize": 17,
        "itemStyle": {"color": color},
        "data": [
            {"value": [i, p.value], "url": job_url(p.job_id)}
            for i, p in enumerate(points)
            if p.verdict == outcome
        ],
    }
