import argparse

import pytest

from shared.config import FederationConfig
from shared.config_loading import add_model_flags, flag_overrides, load_config, redacted
from shared.errors import ConfigError


def test_precedence_is_defaults_then_toml_then_env_then_flags(tmp_path):
    # Given a value set at every level
    toml = tmp_path / "c.toml"
    toml.write_text("rounds = 7\nbeta = 3.0\ncache_duration = 11\nclients = 4\n")
    env = {"SCARLET_BETA": "4.5", "SCARLET_CACHE_DURATION": "12", "OTHER": "x"}
    # When loaded with a flag override
    cfg = load_config(FederationConfig, path=toml, env=env, overrides={"cache_duration": 13})
    # Then each key takes the highest-priority value
    assert (cfg.rounds, cfg.beta, cfg.cache_duration, cfg.clients) == (7, 4.5, 13, 4)
    assert cfg.sample_ratio == 1.0  # default


def test_unknown_keys_are_rejected_with_the_valid_ones_listed(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("rounds = 3\nbta = 2\n")
    with pytest.raises(ConfigError, match="bta.*valid keys"):
        load_config(FederationConfig, path=toml, env={})


def test_a_table_no_loader_reads_is_rejected_instead_of_ignored(tmp_path):
    # Given federation keys put under a [federation] table (they belong at the top level)
    toml = tmp_path / "c.toml"
    toml.write_text("[federation]\nrounds = 3\n\n[service]\nworker_mode = 'pool'\n")
    # When / Then loading says so, naming the table, rather than running 15 default rounds
    with pytest.raises(ConfigError, match=r"unknown table\(s\) \['\[federation\]'\]"):
        load_config(FederationConfig, path=toml, env={})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("sample_ratio", 0),
        ("sample_ratio", 1.5),
        ("beta", -1),
        ("algorithm", "fedavg"),
        ("public_per_round", 20_000),
        ("clients", 0),
    ],
)
def test_invalid_values_are_rejected_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key if key != "public_per_round" else "public"):
        load_config(FederationConfig, env={}, overrides={key: value})


def test_a_missing_or_broken_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(FederationConfig, path=tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(FederationConfig, path=bad, env={})


def test_every_field_has_a_flag_and_only_given_flags_override():
    parser = argparse.ArgumentParser()
    add_model_flags(parser, FederationConfig)
    args = parser.parse_args(["--cache-duration", "9", "--algorithm", "dsfl", "--alpha", "0.05"])
    assert flag_overrides(args, FederationConfig) == {
        "cache_duration": 9,
        "algorithm": "dsfl",
        "alpha": 0.05,
    }
    flags = {a.dest for a in parser._actions}
    assert set(FederationConfig.model_fields) <= flags


def test_algorithm_decides_cache_and_sharpening():
    assert FederationConfig(algorithm="scarlet").uses_cache
    assert FederationConfig(algorithm="scarlet").sharpening == "enhanced_era"
    assert not FederationConfig(algorithm="dsfl").uses_cache
    assert FederationConfig(algorithm="dsfl").sharpening == "era"
    assert FederationConfig(alpha=0).iid


def test_redacted_hides_credentials():
    out = redacted(
        {"broker_url": "amqp://guest:secret@host:5672/", "redis_password": "pw", "rounds": 3}
    )
    assert out == {"broker_url": "amqp://***@host:5672/", "redis_password": "***", "rounds": 3}
