"""The docs promise what the code does."""

from pathlib import Path

from shared.config import FederationConfig, ServiceSettings

ROOT = Path(__file__).resolve().parents[2]


def test_every_configuration_key_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    keys = [*FederationConfig.model_fields, *ServiceSettings.model_fields]
    missing = [k for k in keys if f"| `{k}` |" not in readme]
    assert missing == []


def test_ci_runs_exactly_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
