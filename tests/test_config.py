import re
import typing
from dataclasses import dataclass
from pathlib import Path

import annotated_types
import pytest
from pydantic import BaseModel

from appliance.cli import main
from appliance.config import ConfigError, Config, load_config, parse_config
from appliance.registry import INPUTS, OUTPUTS


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


def test_moved_keys_say_where_they_went():
    with pytest.raises(ConfigError) as e:
        parse_config({"history": {"enabled": False}, "inputs": {"mqtt": {"broker": {"port": 1884}},
                                                                  "opcua": {"endpoint": "opc.tcp://plc:4840"}}})
    assert e.value.problems == ["history: moved to [outputs.history]",
                                "inputs.mqtt.broker: moved to [connections.mqtt]",
                                "inputs.opcua.endpoint: moved to [connections.opcua.endpoint]"]


@pytest.mark.parametrize("toml, key", [
    ("[inputs.mqtt]\nmin_timestamp = nan\n", "inputs.mqtt.min_timestamp"),
    ("[decision]\ncritical_ratio = inf\n", "decision.critical_ratio"),
    ("[windows]\nstaleness_s = 1e300\n", "windows.staleness_s"),
    ("[store]\nmax_in_flight = 99999999999\n", "store.max_in_flight"),
    ("[fleet]\nseed = 99999999999\n", "fleet.seed"),
    ("[outputs.mitigation]\n[[outputs.mitigation.targets]]\nnode = \"ns=2;s=SP\"\nmin = nan\nmax = 100.0\n",
     "outputs.mitigation.targets.0.min"),
    ("[outputs.mitigation]\n[[outputs.mitigation.targets]]\nnode = \"ns=2;s=SP\"\nmin = 0.0\nmax = inf\n",
     "outputs.mitigation.targets.0.max"),
])
def test_every_number_must_be_finite_and_sane(tmp_path, toml, key):
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert any(p.startswith(key + ":") for p in e.value.problems), e.value.problems


# Numbers checked by their own validators (pairs and maps of values): bounded there, not by a range here.
# Limits and set values in the plant's units are bounded to ±MAX_PHYSICAL (issue 24 item 8: ±1e308 was
# accepted), a target's limits also by its engineering_range.
PROCESS_VALUES = {"inputs.mqtt.gaps.periods", "inputs.sparkplug.gaps.periods", "outputs.mitigation.targets.engineering_range"}


def numeric_fields(model: type[BaseModel], prefix: str = ""):
    """``(key, field)`` of every int or float setting below ``model``, lists and optional sections included."""
    for name, f in model.model_fields.items():
        args = typing.get_args(f.annotation) or (f.annotation,)
        for a in args:
            if isinstance(a, type) and issubclass(a, BaseModel):
                yield from numeric_fields(a, f"{prefix}{name}.")
        if any(a in (int, float) for a in args) and bool not in args:
            yield prefix + name, f


def test_every_numeric_setting_has_a_range():
    def bounded(f, kinds):
        return any(isinstance(m, kinds) for m in f.metadata)

    open_ended = sorted(key for key, f in numeric_fields(Config)
                        if not (bounded(f, (annotated_types.Ge, annotated_types.Gt))
                                and bounded(f, (annotated_types.Le, annotated_types.Lt))))
    assert set(open_ended) <= PROCESS_VALUES, sorted(set(open_ended) - PROCESS_VALUES)


@pytest.mark.parametrize("content, reason", [
    (b"site = \"caf\xe9\"\n", "not UTF-8"),
    (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    (b"\n".join(b"[" + b".".join([b"t"] * 3000) + b"]" for _ in range(1)) + b"\n", ""),
    (b"x" * (1024 * 1024 + 10), "larger than"),
])
def test_hostile_files_are_refused_in_one_line(tmp_path, capsys, content, reason):
    f = tmp_path / "hostile.toml"
    f.write_bytes(content)
    assert main(["config", "check", str(f)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and reason in err and "hostile.toml" in err


def test_a_directory_is_not_a_config_file(tmp_path, capsys):
    assert main(["config", "check", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


ROOT = Path(__file__).resolve().parents[1]

# A ```toml block is a gateway configuration, checked with `appliance config check`, unless the
# line before it says otherwise and why, e.g. <!-- not config-checked: the fleet server's fleet.toml -->.
# Unmarked is checked: a new sample is tested the day it is written.
UNCHECKED = re.compile(r"<!--\s*not config-checked:(.*?)-->\s*$")
FENCE = re.compile(r"^```toml\n(.*?)^```", flags=re.S | re.M)


@dataclass(frozen=True)
class TomlSample:
    where: str            # file:line of the opening fence
    text: str
    unchecked: str | None  # why it is not a gateway configuration, if marked so


def toml_samples(markdown: Path) -> list[TomlSample]:
    text = markdown.read_text()
    lines = text.splitlines()
    samples = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start())  # 0-based index of the fence line
        marker = UNCHECKED.search(lines[line - 1]) if line else None
        why = marker.group(1).strip() if marker else None
        if marker and not why:
            raise AssertionError(f"{markdown}:{line + 1}: the not config-checked marker must say why")
        shown = markdown.relative_to(ROOT) if markdown.is_relative_to(ROOT) else markdown
        samples.append(TomlSample(f"{shown}:{line + 1}", m.group(1), why))
    markers = sum(1 for ln in lines if UNCHECKED.search(ln))
    assert markers == sum(s.unchecked is not None for s in samples), (
        f"{markdown}: a not config-checked marker that is not right before a ```toml block")
    return samples


def toml_blocks(readme: Path) -> list[str]:
    return [s.text for s in toml_samples(ROOT / readme) if s.unchecked is None]


def assert_config_check_passes(tmp_path, capsys, sample: TomlSample) -> None:
    f = tmp_path / "sample.toml"
    f.write_text(sample.text)
    assert main(["config", "check", str(f)]) == 0, f"{sample.where}: {capsys.readouterr().err}"


# Every plugin's README, and the store's (an output that is always on, so not in the registry).
README_SAMPLES = [(p.readme, p.section or f"{'inputs' if p in INPUTS else 'outputs'}.{p.key}")
                  for p in INPUTS + OUTPUTS] + [("appliance/store/README.md", "store")]


@pytest.mark.parametrize("readme,section", README_SAMPLES, ids=[s for _, s in README_SAMPLES])
def test_every_plugin_readme_sample_passes_config_check(tmp_path, capsys, readme, section):
    blocks = toml_blocks(Path(readme))
    assert blocks, f"{readme} has no ```toml sample"
    for i, block in enumerate(blocks):
        f = tmp_path / f"{section}-{i}.toml"
        f.write_text(block)
        assert main(["config", "check", str(f)]) == 0, capsys.readouterr().err
        assert f"[{section}" in block, f"{readme} sample {i} does not configure [{section}]"


# The README's and docs/'s samples: those a reader copies into a gateway's configuration.
DOC_SAMPLES = [s for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] for s in toml_samples(md)]


@pytest.mark.parametrize("sample", [s for s in DOC_SAMPLES if s.unchecked is None],
                         ids=lambda s: s.where)
def test_every_toml_sample_of_the_docs_passes_config_check(tmp_path, capsys, sample):
    assert_config_check_passes(tmp_path, capsys, sample)


def test_a_docs_sample_is_checked_unless_marked_with_a_reason(tmp_path):
    (tmp_path / "doc.md").write_text(
        "A gateway's:\n\n```toml\n[web]\nport = 8081\n```\n\n"
        "<!-- not config-checked: the fleet server's fleet.toml -->\n```toml\n[server]\nrounds = 3\n```\n")
    checked, fleet = toml_samples(tmp_path / "doc.md")
    assert (checked.text, checked.unchecked) == ("[web]\nport = 8081\n", None)
    assert (fleet.text, fleet.unchecked) == ("[server]\nrounds = 3\n", "the fleet server's fleet.toml")
    (tmp_path / "why.md").write_text("<!-- not config-checked: -->\n```toml\n[server]\n```\n")
    with pytest.raises(AssertionError, match="must say why"):
        toml_samples(tmp_path / "why.md")
    (tmp_path / "stray.md").write_text("<!-- not config-checked: moved -->\n\n```toml\n[server]\n```\n")
    with pytest.raises(AssertionError, match="not right before"):
        toml_samples(tmp_path / "stray.md")

