"""Generate the "SCARLET communication" Grafana dashboard (the JSON is never edited by hand).

Run it after changing a panel::

    .venv/bin/python deploy/grafana/build_dashboard.py          # rewrites the JSON
    .venv/bin/python deploy/grafana/build_dashboard.py --check  # exit 1 when it is stale

Then rerun ``deploy/kubernetes/components/build_monitoring.py``: it carries the JSON into
the cluster's dashboard ConfigMap. ``tests/deploy/test_dashboard.py`` regenerates the
dashboard and fails when the committed ``dashboards/scarlet-communication.json`` differs,
and ``tests/integration/test_observability.py`` evaluates every query below against a
real Prometheus scraping a live federation. The dashboard targets Grafana 11
(schemaVersion 39) and selects its Prometheus through the ``${datasource}`` variable.
Queries that count workers rely on the ``service`` target label our scrape configurations
set (``deploy/prometheus/``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DASHBOARD_PATH", "TITLE", "UID", "build", "main", "render"]

TITLE = "SCARLET communication"
UID = "scarlet-communication"
DASHBOARD_PATH = Path(__file__).resolve().parent / "dashboards" / "scarlet-communication.json"

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WIDTH = 24  # Grafana's grid is 24 columns wide
RI = "$__rate_interval"

Json = dict[str, Any]


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel."""

    expr: str
    legend: str

    def target(self, ref: str) -> Json:
        """The panel target (range query, PromQL as written)."""
        return {
            "datasource": DATASOURCE,
            "editorMode": "code",
            "expr": self.expr,
            "instant": False,
            "legendFormat": self.legend,
            "range": True,
            "refId": ref,
        }


@dataclass
class Layout:
    """Places panels left to right in rows of 24 columns."""

    x: int = 0
    y: int = 0
    row_height: int = 0
    next_id: int = 1
    panels: list[Json] = field(default_factory=list)

    def row(self, title: str) -> None:
        """Start a new titled row."""
        self._newline()
        self.panels.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": self.y},
                "id": self._id(),
                "panels": [],
                "title": title,
                "type": "row",
            }
        )
        self.y += 1

    def add(self, panel: Json, w: int, h: int) -> None:
        """Place ``panel`` (w columns by h rows) after the previous one."""
        if self.x + w > WIDTH:
            self._newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        panel["id"] = self._id()
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def _newline(self) -> None:
        self.y += self.row_height
        self.x, self.row_height = 0, 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def _panel(
    kind: str,
    title: str,
    description: str,
    queries: list[Query],
    *,
    unit: str = "short",
    options: Json | None = None,
    custom: Json | None = None,
    overrides: list[Json] | None = None,
    extra_defaults: Json | None = None,
    transformations: list[Json] | None = None,
) -> Json:
    defaults: Json = {"unit": unit}
    if custom is not None:
        defaults["custom"] = custom
    defaults.update(extra_defaults or {})
    panel: Json = {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
        "targets": [q.target(chr(ord("A") + i)) for i, q in enumerate(queries)],
        "title": title,
        "type": kind,
    }
    if transformations:
        panel["transformations"] = transformations
    return panel


def _timeseries(
    title: str,
    description: str,
    queries: list[Query],
    *,
    unit: str = "short",
    bars: bool = False,
    stack: bool = False,
    overrides: list[Json] | None = None,
    min_zero: bool = True,
    extra_defaults: Json | None = None,
) -> Json:
    custom: Json = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 60 if bars else 10,
        "lineWidth": 2,
        "pointSize": 4,
        "showPoints": "auto",
        "spanNulls": True,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
    }
    extra: Json = {"min": 0} if min_zero else {}
    extra.update(extra_defaults or {})
    return _panel(
        "timeseries",
        title,
        description,
        queries,
        unit=unit,
        custom=custom,
        overrides=overrides,
        extra_defaults=extra,
        options={
            "legend": {"calcs": ["lastNotNull"], "displayMode": "table", "placement": "bottom"},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def _stat(title: str, description: str, queries: list[Query], *, unit: str = "short") -> Json:
    return _panel(
        "stat",
        title,
        description,
        queries,
        unit=unit,
        options={
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "value_and_name",
        },
        extra_defaults={"decimals": 1} if unit == "percentunit" else None,
    )


def _by_regex(pattern: str, properties: list[Json]) -> Json:
    return {"matcher": {"id": "byRegexp", "options": pattern}, "properties": properties}


def _by_name(name: str, properties: list[Json]) -> Json:
    return {"matcher": {"id": "byName", "options": name}, "properties": properties}


_DASHED = {"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}}
_RIGHT_AXIS = {"id": "custom.axisPlacement", "value": "right"}


def _communication(layout: Layout) -> None:
    layout.row("Communication")
    layout.add(
        _timeseries(
            "Bytes per round vs the DS-FL baseline",
            "Wire bytes (real message bodies) of the last completed round, uplink and "
            "downlink, next to what DS-FL with float32 soft labels would have sent in the "
            "same round (dashed).",
            [
                Query(
                    'sum by (direction) (scarlet_round_bytes{accounting="wire"})',
                    "{{direction}}: wire",
                ),
                Query(
                    'sum by (direction) (scarlet_round_bytes{accounting="baseline"})',
                    "{{direction}}: DS-FL f32 baseline",
                ),
            ],
            unit="bytes",
            overrides=[_by_regex(".*baseline.*", [_DASHED])],
        ),
        12,
        8,
    )
    layout.add(
        _timeseries(
            "Bytes on the wire by direction and kind",
            "Message body bytes per second, counted where published: tasks (aggregator), "
            "uploads (workers), cache-sync requests and replies (cache service).",
            [
                Query(
                    f"sum by (direction, kind) (rate(scarlet_bytes_total[{RI}]))",
                    "{{direction}} {{kind}}",
                )
            ],
            unit="Bps",
            stack=True,
        ),
        12,
        8,
    )
    layout.add(
        _timeseries(
            "Cumulative bytes: actual vs DS-FL baseline",
            "Bytes sent so far (all message bodies), under the paper's tensor accounting, "
            "and the DS-FL float32 baseline of the completed rounds. Counters restart at 0 "
            "when a service restarts.",
            [
                Query("sum(scarlet_bytes_total)", "actual (wire)"),
                Query("sum(scarlet_paper_bytes_total)", "paper accounting"),
                Query("sum(scarlet_baseline_bytes_total)", "DS-FL f32 baseline"),
            ],
            unit="bytes",
            overrides=[_by_regex(".*baseline.*", [_DASHED])],
        ),
        9,
        8,
    )
    layout.add(
        _timeseries(
            "Bytes saved by reason (cumulative)",
            "Net bytes saved against the DS-FL float32 baseline: cache = baseline - paper "
            "(labels neither requested nor resent), compression = paper - wire (codec); "
            "cache-sync RPC traffic is pure overhead (negative).",
            [
                Query(
                    "sum by (reason) (scarlet_bytes_saved_total)"
                    " - sum by (reason) (scarlet_bytes_overhead_total)",
                    "{{reason}}",
                ),
                Query(
                    '-sum(scarlet_bytes_overhead_total{reason="cache_sync"})',
                    "cache-sync traffic",
                ),
            ],
            unit="bytes",
            min_zero=False,
        ),
        9,
        8,
    )
    layout.add(
        _stat(
            "Saved vs DS-FL baseline",
            "Share of the DS-FL float32 baseline not sent, over the completed rounds: in "
            "total and per reason (cache-sync traffic counts against the total).",
            [
                Query(
                    "(sum(scarlet_bytes_saved_total) - sum(scarlet_bytes_overhead_total))"
                    " / sum(scarlet_baseline_bytes_total)",
                    "total",
                ),
                Query(
                    "(sum by (reason) (scarlet_bytes_saved_total)"
                    " - sum by (reason) (scarlet_bytes_overhead_total))"
                    " / scalar(sum(scarlet_baseline_bytes_total))",
                    "{{reason}}",
                ),
            ],
            unit="percentunit",
        ),
        6,
        8,
    )


def _cache(layout: Layout) -> None:
    layout.row("Cache")
    layout.add(
        _timeseries(
            "Cache hit ratio",
            "Share of the drawn public samples served from the synchronized cache (neither "
            "requested from clients nor resent): over the recent rounds and over the run.",
            [
                Query(
                    f"sum(increase(scarlet_cache_hits_total[{RI}])) / "
                    f"(sum(increase(scarlet_cache_hits_total[{RI}]))"
                    f" + sum(increase(scarlet_cache_misses_total[{RI}])))",
                    "recent rounds",
                ),
                Query(
                    "sum(scarlet_cache_hits_total)"
                    " / (sum(scarlet_cache_hits_total) + sum(scarlet_cache_misses_total))",
                    "whole run",
                ),
            ],
            unit="percentunit",
            extra_defaults={"max": 1},
        ),
        8,
        8,
    )
    layout.add(
        _timeseries(
            "Cache signals",
            "Cache signals issued per interval: newly cached, cached (reused, not resent), "
            "expired.",
            [
                Query(
                    f"sum by (signal) (increase(scarlet_cache_signals_total[{RI}]))",
                    "{{signal}}",
                )
            ],
            bars=True,
            stack=True,
        ),
        8,
        8,
    )
    layout.add(
        _timeseries(
            "Cache sync and resyncs",
            "Cache-sync RPC requests served by the cache service per outcome, and worker "
            "replica resyncs, per minute. A steady stream means workers keep losing step.",
            [
                Query(
                    f"sum by (outcome) (rate(scarlet_cache_sync_requests_total[{RI}])) * 60",
                    "sync {{outcome}}",
                ),
                Query(
                    f"sum by (kind) (rate(scarlet_cache_resyncs_total[{RI}])) * 60",
                    "worker resync ({{kind}})",
                ),
                Query("max(scarlet_cache_version)", "cache version"),
            ],
            unit="opm",
            overrides=[_by_name("cache version", [_RIGHT_AXIS, {"id": "unit", "value": "none"}])],
        ),
        8,
        8,
    )


def _learning(layout: Layout) -> None:
    layout.row("Learning")
    layout.add(
        _panel(
            "xychart",
            "Server accuracy vs cumulative bytes",
            "Each point: the server accuracy and the bytes sent so far at one scrape. The "
            "curve a communication-efficient method pushes to the left.",
            [
                Query("max(scarlet_server_accuracy)", "server accuracy"),
                Query("sum(scarlet_bytes_total)", "cumulative bytes"),
            ],
            options={
                "dims": {"frame": 0},
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "series": [
                    {
                        "name": "server accuracy",
                        "pointSize": {"fixed": 5, "max": 20, "min": 1},
                        "x": "cumulative bytes",
                        "y": "server accuracy",
                    }
                ],
                "seriesMapping": "manual",
                "tooltip": {"mode": "single", "sort": "none"},
            },
            custom={"show": "points+lines", "lineWidth": 2, "pointSize": {"fixed": 5}},
            overrides=[
                _by_name("cumulative bytes", [{"id": "unit", "value": "bytes"}]),
                _by_name(
                    "server accuracy",
                    [{"id": "unit", "value": "percentunit"}, {"id": "min", "value": 0}],
                ),
            ],
            transformations=[
                {"id": "joinByField", "options": {"byField": "Time", "mode": "outer"}},
            ],
        ),
        12,
        9,
    )
    layout.add(
        _timeseries(
            "Accuracy and cumulative bytes over time",
            "Server accuracy on the test split, mean client accuracy on their own shards, "
            "and the bytes sent so far (right axis).",
            [
                Query("max(scarlet_server_accuracy)", "server accuracy"),
                Query("max(scarlet_client_accuracy)", "client accuracy"),
                Query("sum(scarlet_bytes_total)", "cumulative bytes"),
            ],
            unit="percentunit",
            overrides=[
                _by_name("cumulative bytes", [_RIGHT_AXIS, {"id": "unit", "value": "bytes"}])
            ],
        ),
        12,
        9,
    )


def _rounds(layout: Layout) -> None:
    layout.row("Rounds and reliability")
    layout.add(
        _stat(
            "Rounds",
            "Rounds completed and the round the aggregator is in.",
            [
                Query("sum(scarlet_rounds_completed_total)", "completed"),
                Query("max(scarlet_round)", "current"),
            ],
        ),
        4,
        8,
    )
    layout.add(
        _timeseries(
            "Round duration p50 / p95",
            "Wall time of whole rounds (open to server model evaluated), from the histogram.",
            [
                Query(
                    "histogram_quantile(0.5, sum by (le) "
                    f"(rate(scarlet_round_duration_seconds_bucket[{RI}])))",
                    "p50",
                ),
                Query(
                    "histogram_quantile(0.95, sum by (le) "
                    f"(rate(scarlet_round_duration_seconds_bucket[{RI}])))",
                    "p95",
                ),
            ],
            unit="s",
        ),
        10,
        8,
    )
    layout.add(
        _timeseries(
            "Open round: age and clients missing",
            "Seconds since the current round opened (0 between rounds) and the sampled "
            "clients whose upload has not arrived (right axis): the aggregator's lag.",
            [
                Query("max(scarlet_round_age_seconds)", "round age"),
                Query("max(scarlet_clients_missing)", "clients missing"),
            ],
            unit="s",
            overrides=[_by_name("clients missing", [_RIGHT_AXIS, {"id": "unit", "value": "none"}])],
        ),
        10,
        8,
    )
    layout.add(
        _timeseries(
            "Uploads by outcome",
            "Uploads the aggregator received per interval: accepted, duplicate (redelivered), "
            "late (round closed), rejected (wrong round, client or indices), invalid "
            "(did not decode: dead-lettered).",
            [
                Query(
                    f"sum by (outcome) (increase(scarlet_uploads_total[{RI}]))",
                    "{{outcome}}",
                )
            ],
            bars=True,
            stack=True,
        ),
        8,
        8,
    )
    layout.add(
        _timeseries(
            "Dead letters",
            "Messages dead-lettered per interval, by kind (upload, task, cache_sync), and "
            "in total since the services started.",
            [
                Query(
                    f"sum by (kind) (increase(scarlet_dead_letters_total[{RI}]))",
                    "{{kind}}",
                ),
                Query("sum(scarlet_dead_letters_total)", "total"),
            ],
            overrides=[_by_name("total", [_RIGHT_AXIS])],
        ),
        8,
        8,
    )
    layout.add(
        _timeseries(
            "Aggregator phase durations (mean)",
            "Mean wall time of the aggregator's phases: select (plan and publish tasks), "
            "collect (wait for uploads), aggregate (ERA, cache commit), distill (server).",
            [
                Query(
                    f"sum by (phase) (rate(scarlet_round_phase_seconds_sum[{RI}]))"
                    f" / sum by (phase) (rate(scarlet_round_phase_seconds_count[{RI}]))",
                    "{{phase}}",
                )
            ],
            unit="s",
        ),
        8,
        8,
    )


def _workers(layout: Layout) -> None:
    layout.row("Workers")
    layout.add(
        _timeseries(
            "Workers active",
            "Worker processes Prometheus scrapes successfully (up), all it discovered, and "
            "those that finished a task in the interval.",
            [
                Query('sum(up{service="worker"})', "up"),
                Query('count(up{service="worker"})', "discovered"),
                Query(
                    "count(sum by (instance) "
                    f'(increase(scarlet_worker_tasks_total{{outcome="done"}}[{RI}])) > 0)'
                    " or vector(0)",
                    "busy",
                ),
            ],
            extra_defaults={"decimals": 0},
        ),
        8,
        8,
    )
    layout.add(
        _timeseries(
            "Worker phase durations p50 / p95",
            "Per task: distil on the previous round's global labels, train on private data, "
            "predict on the requested public samples.",
            [
                Query(
                    "histogram_quantile(0.5, sum by (le, phase) "
                    f"(rate(scarlet_worker_phase_seconds_bucket[{RI}])))",
                    "p50 {{phase}}",
                ),
                Query(
                    "histogram_quantile(0.95, sum by (le, phase) "
                    f"(rate(scarlet_worker_phase_seconds_bucket[{RI}])))",
                    "p95 {{phase}}",
                ),
            ],
            unit="s",
            overrides=[_by_regex("p95.*", [_DASHED])],
        ),
        8,
        8,
    )
    layout.add(
        _timeseries(
            "Worker tasks by outcome",
            "Tasks handled per minute: done, redelivered (answered again), stale, desync "
            "(requeued: replica out of step), foreign, invalid.",
            [
                Query(
                    f"sum by (outcome) (rate(scarlet_worker_tasks_total[{RI}])) * 60",
                    "{{outcome}}",
                )
            ],
            unit="opm",
        ),
        8,
        8,
    )


def build() -> Json:
    """The dashboard as a JSON-ready dict."""
    layout = Layout()
    for section in (_communication, _cache, _learning, _rounds, _workers):
        section(layout)
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "Bytes on the wire against the DS-FL float32 baseline, what the "
        "cache and the codec save, and the health of a SCARLET federation.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": layout.panels,
        "refresh": "10s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["scarlet", "federated-distillation"],
        "templating": {
            "list": [
                {
                    "current": {},
                    "hide": 0,
                    "includeAll": False,
                    "label": "Data source",
                    "multi": False,
                    "name": "datasource",
                    "options": [],
                    "query": "prometheus",
                    "refresh": 1,
                    "regex": "",
                    "type": "datasource",
                }
            ]
        },
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": TITLE,
        "uid": UID,
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    """The dashboard file's exact text."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the dashboard JSON; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--out", type=Path, default=DASHBOARD_PATH, help="dashboard file")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
