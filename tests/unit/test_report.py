"""``scarlet report`` turns real results files into readable PNGs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from scarlet.cli import main
from scarlet.report import (
    ACCURACY_FILE,
    BYTES_FILE,
    ROUNDS_FILE,
    byte_unit,
    load_run,
    run_label,
)
from shared.errors import DataError

SMALL = dict(
    dataset="digits",
    clients=2,
    samples_per_client=150,
    public_size=200,
    public_per_round=80,
    rounds=3,
    test_per_client=20,
    local_epochs=1,
    distill_epochs=1,
    server_distill_epochs=1,
    batch_size=25,
    distill_batch_size=40,
    cache_duration=2,
)


@pytest.fixture(scope="module")
def results_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from scarlet.simulate import EmbeddedFederation, prepare_data
    from shared.config import FederationConfig

    folder = tmp_path_factory.mktemp("results")
    paths = []
    for algorithm, codec in (("scarlet", "q8+zstd"), ("dsfl", "f32")):
        config = FederationConfig(
            algorithm=algorithm, uplink_codec=codec, downlink_codec=codec, **SMALL
        )
        results = EmbeddedFederation(config, prepare_data(config)).run()
        paths.append(results.write(folder / f"{algorithm}.json"))
    return paths


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_scarlet_report_writes_three_readable_pngs_of_the_runs(results_files, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", *map(str, results_files), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in (ACCURACY_FILE, BYTES_FILE, ROUNDS_FILE):
        path = out / name
        assert str(path) in printed
        assert 10_000 < path.stat().st_size < 2_000_000, f"{name}: {path.stat().st_size} B"
        assert _png_size(path) == (1200, 700)


def test_the_same_labels_get_the_file_name(results_files, tmp_path):
    from scarlet.report import write_report

    same = [results_files[0], results_files[0]]
    paths = write_report(same, tmp_path, width_px=800, height_px=500)
    assert [p.name for p in paths] == [ACCURACY_FILE, BYTES_FILE, ROUNDS_FILE]
    assert all(_png_size(p) == (800, 500) for p in paths)


def test_runs_are_labelled_from_their_configuration(results_files):
    labels = [load_run(p).label for p in results_files]
    assert labels == ["scarlet, q8+zstd", "dsfl, f32"]
    assert run_label({"algorithm": "scarlet", "uplink_codec": "q4", "downlink_codec": "q8"}) == (
        "scarlet, q4 up / q8 down"
    )


def test_byte_units_keep_numbers_readable():
    assert byte_unit(900) == (1.0, "B")
    assert byte_unit(20 * 1024) == (1024.0, "KiB")
    assert byte_unit(3 * 2**20) == (2.0**20, "MiB")
    assert byte_unit(5 * 2**30) == (2.0**30, "GiB")


def test_a_file_that_is_not_a_results_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rounds": []}))
    with pytest.raises(DataError, match="not a readable results file"):
        load_run(bad)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"config": {}, "rounds": []}))
    assert main(["report", str(empty), "--out", str(tmp_path / "r")]) == 1
    assert "holds no rounds" in capsys.readouterr().err
