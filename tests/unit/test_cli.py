import json

from scarlet.cli import main


def test_check_config_prints_the_effective_configuration(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('algorithm = "dsfl"\nrounds = 3\n')
    assert main(["check-config", "--config", str(cfg), "--rounds", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["algorithm"] == "dsfl" and out["rounds"] == 4


def test_unknown_keys_and_bad_values_exit_with_a_clear_message(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("roundz = 3\n")
    assert main(["check-config", "--config", str(cfg)]) == 1
    assert "roundz" in capsys.readouterr().err
    assert main(["check-config", "--sample-ratio", "2"]) == 1
    assert "sample_ratio" in capsys.readouterr().err


def test_a_missing_data_set_is_reported_not_a_traceback(tmp_path, capsys):
    code = main(
        [
            "simulate",
            "--dataset",
            "cifar10",
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "r.json"),
            "--no-progress",
        ]
    )
    assert code == 1
    assert "cifar" in capsys.readouterr().err.lower()
