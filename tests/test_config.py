import pytest

from appliance.cli import main
from appliance.config import ConfigError, Config, load_config, parse_config


def test_defaults_are_valid():
    cfg = Config()
    assert cfg.inputs.mqtt.qos == 1 and cfg.decision.raise_k <= cfg.decision.raise_n


def test_errors_name_the_key_and_reason():
    with pytest.raises(ConfigError) as e:
        parse_config({"decision": {"raise_k": 9, "raise_n": 3}, "inputs": {"mqtt": {"brokr": {}}},
                      "windows": {"staleness_s": -1}})
    text = str(e.value)
    assert "inputs.mqtt.brokr: unknown key" in text
    assert "windows.staleness_s: Input should be greater than 0" in text
    assert "raise_k (9) must be <= raise_n (3)" in text


def test_topic_pattern_validation():
    with pytest.raises(ConfigError) as e:
        parse_config({"inputs": {"mqtt": {"topics": [{"pattern": "plant/+/x"}, {"pattern": "plant/x"}]}}})
    msg = str(e.value)
    assert "inputs.mqtt.topics.0.pattern" in msg and "placeholders" in msg
    assert "'asset' must be set" in msg


def test_config_check_cli(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text('site = "line-3"\n[decision]\nraise_k = 2\nraise_n = 4\n')
    assert main(["config", "check", str(good)]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[decision]\nraise_k = "three"\n')
    assert main(["config", "check", str(bad)]) == 2
    assert "decision.raise_k" in capsys.readouterr().err
    broken = tmp_path / "broken.toml"
    broken.write_text("[decision\n")
    assert main(["config", "check", str(broken)]) == 2
    assert main(["config", "check", str(tmp_path / "missing.toml")]) == 2


def test_example_config_is_valid():
    cfg = load_config("config/appliance.example.toml")
    assert cfg.site
