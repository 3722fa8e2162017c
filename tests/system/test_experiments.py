"""The experiment harness: a reduced grid through the real code path, and the table format."""

import math
import struct

import pytest

from bench.experiments.__main__ import main
from bench.experiments.baselines import run_centralized, run_individual
from bench.experiments.grid import QUICK_SIZES, GridSpec, parse_alphas, parse_sets
from bench.experiments.report import COLUMNS, MISSING, NA, MethodRow, format_table
from bench.experiments.sensitivity import linearity, mean_entropy
from scarlet.simulate import prepare_data
from shared.config import FederationConfig

GRID_ARGS = [
    "grid",
    "--quick",
    "--dataset",
    "digits",
    "--methods",
    "dsfl",
    "scarlet",
    "comet+codec",
    "--alphas",
    "0.5",
    "--seeds",
    "0",
    "--rounds",
    "2",
    "--no-progress",
]


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table after ``heading`` (header row first)."""
    lines = markdown.splitlines()
    start = lines.index(heading)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return [rows[0], *rows[2:]]  # drop the |---| separator


def png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def grid_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiments")
    assert main([*GRID_ARGS, "--out", str(out)]) == 0
    return out


@pytest.mark.system
def test_reduced_grid_writes_one_results_file_per_run(grid_out):
    files = sorted(p.name for p in (grid_out / "runs").glob("*.json"))
    assert files == [
        "comet-codec__alpha-0.5__seed-0.json",
        "dsfl__alpha-0.5__seed-0.json",
        "scarlet__alpha-0.5__seed-0.json",
    ]


@pytest.mark.system
def test_report_table_has_every_column_filled_for_every_row(grid_out):
    rows = table_rows((grid_out / "results.md").read_text(), "## Dirichlet α = 0.5")
    header, body = rows[0], rows[1:]
    assert len(header) == len(COLUMNS)
    assert [r[0] for r in body] == ["dsfl", "comet+codec", "scarlet"]
    for row in body:
        assert len(row) == len(COLUMNS), row
        # federated methods measure everything: no empty, missing or n/a cell
        assert all(cell and cell not in (MISSING, NA) for cell in row), row
    dsfl = dict(zip(header, body[0], strict=True))
    assert dsfl["vs DS-FL (paper)"] == "1.000" and dsfl["vs DS-FL (wire)"] == "1.000"
    scarlet = dict(zip(header, body[1], strict=True))
    assert 0 < float(scarlet["final server acc (%)"]) <= 100


@pytest.mark.system
def test_report_plot_exists_with_a_sane_size(grid_out):
    png = grid_out / "accuracy_vs_bytes_alpha-0.5.png"
    assert png.stat().st_size > 20_000
    width, height = png_size(png)
    assert 1000 <= width <= 4000 and 300 <= height <= 1500
    assert f"]({png.name})" in (grid_out / "results.md").read_text()


@pytest.mark.system
def test_grid_resumes_without_rerunning_finished_runs(grid_out, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in (grid_out / "runs").glob("*.json")}
    assert main([*GRID_ARGS, "--out", str(grid_out), "--no-estimate"]) == 0
    assert "3 already done, 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.system
def test_baselines_measure_accuracy_and_send_nothing():
    config = FederationConfig.model_validate({**QUICK_SIZES, "dataset": "digits", "alpha": 0.5})
    data = prepare_data(config)
    for run in (run_centralized, run_individual):
        results = run(config, data)
        s = results.summary()
        assert s["rounds"] == config.rounds
        assert 0 < s["final_server_accuracy"] <= 1 and 0 < s["final_client_accuracy"] <= 1
        assert s["paper_bytes_total"] == 0 and s["wire_bytes_total"] == 0


def row(method, **kw):
    values = dict(
        method=method,
        seeds=3,
        final_server=(0.81234, 0.00456),
        best_server=(0.82, 0.001),
        client=(0.9, 0.01),
        bytes={
            "wire_bytes_up": 3 * 2**20,
            "wire_bytes_down": 2**20,
            "paper_bytes_up": 4 * 2**20,
            "paper_bytes_down": 5 * 2**20,
        },
        paper_ratio=0.5,
        wire_ratio=0.25,
        wall_seconds=12.3,
    )
    values.update(kw)
    return MethodRow(**values)


def test_table_formats_means_stds_bytes_and_ratios():
    text = format_table([row("scarlet"), row("centralized"), row("cfd", client=(math.nan,) * 2)])
    lines = text.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[5] == "up wire (MiB)" and len(header) == len(COLUMNS)
    cells = {
        ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]
    }
    assert cells["scarlet"][1:] == [
        "3",
        "81.23 ± 0.46",
        "82.00 ± 0.10",
        "90.00 ± 1.00",
        "3.00",
        "1.00",
        "4.00",
        "5.00",
        "0.500",
        "0.250",
        "12",
    ]
    # no federated traffic: every traffic cell says so, accuracies stay
    assert cells["centralized"][5:11] == [NA] * 6 and cells["centralized"][2] == "81.23 ± 0.46"
    # a quantity the run did not measure
    assert cells["cfd"][4] == MISSING
    assert all(all(c for c in r) for r in cells.values())


def test_table_switches_to_kib_for_small_runs_and_drops_std_for_one_seed():
    small = row(
        "dsfl",
        seeds=1,
        final_server=(0.5, math.nan),
        bytes=dict.fromkeys(
            ("wire_bytes_up", "wire_bytes_down", "paper_bytes_up", "paper_bytes_down"), 2048.0
        ),
        paper_ratio=math.nan,
    )
    text = format_table([small])
    assert "up wire (KiB)" in text
    cells = [c.strip() for c in text.splitlines()[2].strip("|").split("|")]
    assert cells[2] == "50.00" and cells[5] == "2.00" and cells[9] == MISSING


def test_cli_helpers_parse_alphas_and_config_overrides():
    assert parse_alphas(["0.05", "0.5", "iid", "IID"]) == (0.05, 0.5, 0.0, 0.0)
    assert parse_sets(["cache_duration=20", "model=cnn"]) == {
        "cache_duration": "20",
        "model": "cnn",
    }
    with pytest.raises(ValueError, match="unknown configuration key"):
        parse_sets(["nope=1"])
    with pytest.raises(ValueError, match="unknown method"):
        GridSpec(methods=("fedavg",), alphas=(0.5,), seeds=(0,))


def test_command_line_sets_win_over_a_methods_own_keys():
    # ours carries refresh_share 0.5 and beta 4; --set must still reach its runs
    plain = GridSpec(methods=("scarlet+sliding",), alphas=(0.5,), seeds=(0,)).runs()[0]
    assert (plain.config.refresh_share, plain.config.beta) == (0.5, 4.0)
    overrides = parse_sets(["refresh_share=0.4", "beta=2", "uplink_codec=q8+zstd"])
    grid = GridSpec(
        methods=("scarlet+sliding", "dsfl"), alphas=(0.5,), seeds=(0,), overrides=overrides
    )
    ours, dsfl = grid.runs()
    assert (ours.config.refresh_share, ours.config.beta) == (0.4, 2.0)
    assert ours.config.uplink_codec == dsfl.config.uplink_codec == "q8+zstd"


def test_sensitivity_measures_entropy_and_linearity():
    import numpy as np
    import torch

    assert mean_entropy(torch.full((4, 8), 1 / 8)) == pytest.approx(3.0)
    assert mean_entropy(torch.eye(5)) == pytest.approx(0.0)
    x = np.linspace(1, 5, 9)
    assert linearity(x, list(2 - 0.3 * x)) == pytest.approx((1.0, 1.0))
    r2, peak = linearity(x, [0.0] * 4 + [1.0] * 5)  # a switch, not a dial
    assert r2 < 0.9 and peak > 5
