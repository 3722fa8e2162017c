"""``scarlet compare``: ours and DS-FL with the same codec, on one split, one table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scarlet.cli import main
from scarlet.compare import baseline_config
from shared.config import FederationConfig

SMALL = [
    "--dataset", "digits", "--model", "mlp", "--clients", "3", "--samples-per-client", "150",
    "--test-per-client", "20", "--public-size", "300", "--public-per-round", "100",
    "--rounds", "4", "--local-epochs", "1", "--distill-epochs", "1",
    "--server-distill-epochs", "1", "--cache-duration", "5", "--cache-policy", "sliding",
]  # fmt: skip


def test_compare_runs_both_on_one_split_and_prints_rounds_and_bytes_to_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # When a user compares the sliding cache with DS-FL
    status = main(["compare", *SMALL, "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    # Then both runs were made, with the same codec, and the table names them
    assert status == 0
    ours = json.loads((tmp_path / "run.json").read_text())
    dsfl = json.loads((tmp_path / "run-dsfl.json").read_text())
    assert ours["config"]["algorithm"] == "scarlet" and dsfl["config"]["algorithm"] == "dsfl"
    assert ours["config"]["uplink_codec"] == dsfl["config"]["uplink_codec"] == "q8+ans"
    assert "| scarlet (sliding cache), q8+ans |" in out
    assert "| dsfl, q8+ans |" in out
    assert "95 %" in out
    # the sliding cache requested fewer labels than DS-FL after the first round
    assert sum(r["labels_up"] for r in ours["rounds"]) < sum(r["labels_up"] for r in dsfl["rounds"])
    assert (tmp_path / "accuracy_vs_bytes.png").stat().st_size > 0


def test_compare_refuses_a_dsfl_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", *SMALL[:-2], "--algorithm", "dsfl", "--no-progress"]) == 2
    assert "DS-FL itself" in capsys.readouterr().err


def test_the_baseline_keeps_everything_but_the_algorithm() -> None:
    ours = FederationConfig(cache_policy="sliding", uplink_codec="q6+zstd", seed=3)
    base = baseline_config(ours)
    assert base.algorithm == "dsfl" and base.cache_policy == "fixed"
    assert (base.uplink_codec, base.seed, base.public_size) == ("q6+zstd", 3, ours.public_size)
    assert base.run_id != ours.run_id
