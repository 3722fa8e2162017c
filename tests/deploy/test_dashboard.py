"""The Grafana dashboard is generated, complete and queries only metrics that exist; the
Prometheus configuration and alert rules pass promtool (config, rules and rule tests)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client import CollectorRegistry

from shared.metrics import Metrics
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"

REQUIRED_PANELS = {
    "Bytes per round vs the DS-FL baseline",
    "Bytes saved by reason (cumulative)",
    "Saved vs DS-FL baseline",
    "Cache hit ratio",
    "Server accuracy vs cumulative bytes",
    "Round duration p50 / p95",
    "Uploads by outcome",
    "Dead letters",
    "Worker phase durations p50 / p95",
    "Workers active",
}
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def load_builder() -> ModuleType:
    """``deploy/grafana/build_dashboard.py`` as a module (deploy/ is not a package)."""
    path = GRAFANA_DIR / "build_dashboard.py"
    spec = importlib.util.spec_from_file_location("build_dashboard", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def panel_queries(dashboard: dict[str, object]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target, Grafana's variables replaced."""
    out = []
    panels = dashboard["panels"]
    assert isinstance(panels, list)
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


def require_promtool() -> str:
    return require_tool("promtool", "apt-get install prometheus (scripts/install.sh does)")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, object]:
    return json.loads((GRAFANA_DIR / "dashboards" / "scarlet-communication.json").read_text())


def test_the_committed_dashboard_is_exactly_what_the_builder_generates():
    builder = load_builder()
    committed = builder.DASHBOARD_PATH.read_text()
    assert committed == builder.render(), (
        "deploy/grafana/dashboards/scarlet-communication.json is stale or edited by hand: "
        "run .venv/bin/python deploy/grafana/build_dashboard.py"
    )
    assert builder.main(["--check"]) == 0


def test_the_dashboard_has_the_panels_the_operations_guide_describes(dashboard):
    assert dashboard["title"] == "SCARLET communication"
    assert dashboard["schemaVersion"] == 39
    titles = [p["title"] for p in dashboard["panels"] if p["type"] != "row"]
    assert set(titles) >= REQUIRED_PANELS
    assert len(titles) == len(set(titles)), "panel titles repeat"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    guide = (ROOT / "docs" / "OPERATIONS.md").read_text()
    assert [t for t in titles if f"**{t}**" not in guide] == []


def test_every_panel_uses_the_datasource_variable(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"


def test_panels_tile_the_grid_without_overlap(dashboard):
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        mine = {(g["x"] + i, g["y"] + j) for i in range(g["w"]) for j in range(g["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_every_query_names_only_metrics_the_catalogue_exposes(dashboard):
    exposed = {
        sample.name
        for family in Metrics.create(CollectorRegistry()).registry.collect()
        for sample in family.samples
    }
    for title, expr in panel_queries(dashboard):
        for name in re.findall(r"\bscarlet_[a-z_]+", expr):
            assert name in exposed, f"{title}: {name} is not a metric"
        assert "$" not in expr, f"{title}: unsubstituted variable in {expr}"


def test_every_query_parses_as_promql(dashboard, tmp_path):
    promtool = require_promtool()
    rules = [
        {"record": f"scarlet:dashboard_query_{i}", "expr": expr}
        for i, (_, expr) in enumerate(panel_queries(dashboard))
    ]
    path = tmp_path / "queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts_the_prometheus_files(args):
    promtool = require_promtool()
    done = subprocess.run(
        [promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_the_alert_rules_use_only_exposed_metrics_and_the_service_label():
    exposed = {
        sample.name
        for family in Metrics.create(CollectorRegistry()).registry.collect()
        for sample in family.samples
    }
    text = (PROMETHEUS_DIR / "alerts.yml").read_text()
    exprs = "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith(("#", "summary"))
    )
    for name in re.findall(r"\bscarlet_[a-z_]+(?=[\[{ )])", exprs):
        assert name in exposed, name
    guide = (ROOT / "docs" / "OPERATIONS.md").read_text()
    for alert in re.findall(r"alert: (\w+)", text):
        assert f"`{alert}`" in guide, f"{alert} is not explained in docs/OPERATIONS.md"


def test_grafana_provisioning_points_at_the_generated_dashboards():
    datasources = (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    assert "type: prometheus" in datasources
    dashboards = (GRAFANA_DIR / "provisioning" / "dashboards" / "scarlet.yaml").read_text()
    assert "type: file" in dashboards
    assert "path: /var/lib/grafana/dashboards/scarlet" in dashboards
