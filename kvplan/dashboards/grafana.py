"""Typed builders for the few Grafana dashboard JSON shapes kvplan uses (Grafana 11, schema 39).

Plain frozen dataclasses rendered to dicts; ids and grid positions are assigned in one pass so
the same input always gives byte-identical JSON (the committed files are checked for drift).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24

PanelKind = Literal["timeseries", "stat", "table", "bargauge", "state-timeline"]


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False  # tables and stats of current values
    format: Literal["time_series", "table", "heatmap"] = "time_series"


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str  # a Grafana unit id ("s", "reqps", "percentunit", "bool", "short", "suffix: tok/s")
    queries: tuple[Query, ...]
    description: str = ""
    kind: PanelKind = "timeseries"
    width: int = 12
    height: int = 8
    min: float | None = None
    max: float | None = None
    thresholds: tuple[tuple[float, str], ...] = ()  # (value, color) above the green base
    stack: bool = False
    step: bool = False  # draw as steps (flags change in jumps, not ramps)
    transformations: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    name: str
    label: str
    query: str = ""  # label_values(...) for query variables
    kind: Literal["datasource", "query", "constant"] = "query"
    multi: bool = True
    value: str = ""  # constant variables


@dataclass(frozen=True)
class Annotation:
    name: str
    expr: str
    title: str
    color: str = "orange"


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    variables: tuple[Variable, ...]
    tags: tuple[str, ...] = ("kvplan",)
    annotations: tuple[Annotation, ...] = ()
    link_siblings: bool = True  # a drop-down to the other kvplan dashboards


def _thresholds(steps: Sequence[tuple[float, str]]) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": "green", "value": None}, *({"color": c, "value": v} for v, c in steps)],
    }


def _target(q: Query, ref: str) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "refId": ref,
        "expr": q.expr,
        "legendFormat": q.legend or "__auto",
        "range": not q.instant,
        "instant": q.instant,
        "format": q.format,
        "editorMode": "code",
    }


def _panel(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit, "thresholds": _thresholds(p.thresholds)}
    if p.min is not None:
        defaults["min"] = p.min
    if p.max is not None:
        defaults["max"] = p.max
    if p.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineInterpolation": "stepAfter" if p.step else "linear",
            "fillOpacity": 20 if p.stack else 0,
            "stacking": {"mode": "normal" if p.stack else "none", "group": "A"},
            "showPoints": "never",
            "spanNulls": False,
        }
        if p.thresholds:
            defaults["custom"]["thresholdsStyle"] = {"mode": "dashed"}
    by_kind: dict[str, dict[str, Any]] = {
        "timeseries": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "stat": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
        },
        "table": {"showHeader": True, "cellHeight": "sm"},
        "bargauge": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
        },
        "state-timeline": {"showValue": "auto", "mergeValues": True, "rowHeight": 0.9},
    }
    options = by_kind[p.kind]
    refs = [chr(ord("A") + i) for i in range(len(p.queries))]
    panel: dict[str, Any] = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [_target(q, r) for q, r in zip(p.queries, refs, strict=True)],
    }
    if p.transformations:
        panel["transformations"] = list(p.transformations)
    return panel


def _variable(v: Variable) -> dict[str, Any]:
    if v.kind == "datasource":
        return {
            "name": v.name,
            "label": v.label,
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
            "regex": "",
        }
    if v.kind == "constant":
        return {
            "name": v.name,
            "label": v.label,
            "type": "constant",
            "query": v.value,
            "hide": 2,
            "current": {"text": v.value, "value": v.value},
        }
    return {
        "name": v.name,
        "label": v.label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": v.query, "refId": f"var-{v.name}", "qryType": 1},
        "definition": v.query,
        "refresh": 2,  # on time range change: pools appear as the plan changes
        "multi": v.multi,
        "includeAll": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
        "hide": 0,
        "regex": "",
    }


def render(d: Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model; rows are laid out top to bottom, panels left to right."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in d.rows:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y, x, line_height = pid + 1, y + 1, 0, 0
        for p in row.panels:
            if x + p.width > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel(p, pid, x, y))
            pid, x, line_height = pid + 1, x + p.width, max(line_height, p.height)
        y += line_height
    annotations = [
        {
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        },
        *(
            {
                "datasource": DATASOURCE,
                "enable": True,
                "expr": a.expr,
                "iconColor": a.color,
                "name": a.name,
                "step": "15s",
                "titleFormat": a.title,
                "useValueForTime": False,
            }
            for a in d.annotations
        ),
    ]
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": list(d.tags),
        "editable": True,
        "graphTooltip": 1,  # shared crosshair: compare pools at the same instant
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "utc",
        "templating": {"list": [_variable(v) for v in d.variables]},
        "annotations": {"list": annotations},
        "links": [
            {
                "type": "dashboards",
                "title": "kvplan",
                "tags": ["kvplan"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ]
        if d.link_siblings
        else [],
        "panels": panels,
    }


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(panel title, refId, target) of every panel query in rendered dashboard JSON."""
    return [
        (p["title"], t["refId"], t)
        for p in dashboard["panels"]
        if p["type"] != "row"
        for t in p.get("targets", [])
    ]
