"""A whole federation in one process, on a small real data set (MNIST-5k)."""

import json

import pytest

from scarlet.cli import main
from scarlet.simulate import EmbeddedFederation, prepare_data
from shared.config import FederationConfig

pytestmark = pytest.mark.system

SMALL = dict(
    dataset="mnist-5k",
    clients=5,
    samples_per_client=400,
    public_size=1000,
    public_per_round=500,
    rounds=4,
    test_per_client=100,
    local_epochs=2,
    distill_epochs=2,
    server_distill_epochs=5,
    batch_size=50,
    distill_batch_size=50,
    cache_duration=10,
)


@pytest.fixture(scope="module")
def runs():
    out = {}
    for algorithm in ("scarlet", "dsfl"):
        config = FederationConfig(algorithm=algorithm, **SMALL)
        federation = EmbeddedFederation(config, prepare_data(config))
        out[algorithm] = federation.run()
    return out


def test_both_algorithms_finish_far_above_chance(runs):
    for algorithm, results in runs.items():
        summary = results.summary()
        assert summary["rounds"] == SMALL["rounds"], algorithm
        # 10 classes: chance is 10 %
        assert summary["final_server_accuracy"] > 0.5, algorithm
        assert summary["final_client_accuracy"] > 0.7, algorithm


def test_scarlet_sends_strictly_fewer_soft_labels_and_bytes_than_dsfl(runs):
    s, d = runs["scarlet"].summary(), runs["dsfl"].summary()
    assert s["labels_up"] < d["labels_up"]
    assert s["labels_down"] < d["labels_down"]
    assert s["paper_bytes_total"] < d["paper_bytes_total"]
    assert s["wire_bytes_total"] < d["wire_bytes_total"]


def test_dsfl_costs_exactly_its_own_baseline_under_the_paper_accounting(runs):
    d = runs["dsfl"].summary()
    assert d["paper_bytes_total"] == d["baseline_bytes_total"]
    s = runs["scarlet"].summary()
    assert s["baseline_bytes_total"] == d["baseline_bytes_total"]
    assert s["saved_by_cache_bytes"] > 0


def test_every_upload_was_accepted_and_the_cache_hit_ratio_grows(runs):
    rounds = runs["scarlet"].rounds
    assert all(r.uploads == {"accepted": SMALL["clients"]} for r in rounds)
    ratios = [r.cache_hit_ratio for r in rounds]
    assert ratios[0] == 0 and ratios[-1] > ratios[1] > 0


def test_the_cli_writes_a_results_file_a_program_can_read(tmp_path, capsys):
    out = tmp_path / "res.json"
    flags = [
        "--dataset",
        "digits",
        "--clients",
        "3",
        "--samples-per-client",
        "150",
        "--public-size",
        "300",
        "--public-per-round",
        "100",
        "--rounds",
        "2",
        "--test-per-client",
        "30",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(["simulate", *flags]) == 0
    doc = json.loads(out.read_text())
    assert doc["summary"]["rounds"] == 2 and len(doc["rounds"]) == 2
    assert doc["config"]["clients"] == 3
    assert set(doc["rounds"][0]) >= {
        "server_accuracy",
        "wire_bytes_up",
        "paper_bytes_down",
        "baseline_bytes_up",
        "cache_hit_ratio",
    }
    printed = capsys.readouterr().out
    assert "round   1" in printed and "results written" in printed
