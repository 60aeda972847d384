"""Every figure in README.md and docs/*.md comes from a committed result file that says where it was measured.

A figure names the script that measured it and the JSON it wrote
(`` `benchmarks/detector.py` → `benchmarks/results/detector.json` ``). This checks
that each ``benchmarks/results/*.json`` the documents name exists and carries the
block ``benchmarks.common.write_results`` puts in front (machine, CPU, cores,
Python, library versions), and that every benchmark script in a row of the
README's performance table has its result file beside it.

Result files written before that block existed are listed in ``LEGACY`` with
the reason; an entry must go once its file is re-run (the test says so), so the
list only shrinks.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MACHINE_KEYS = ("date_utc", "cpu", "machine", "cores", "python", "libraries")

# A results path as the documents write it: braces ({,_one_point}) and * stand for several files.
RESULT_PATH = re.compile(r"benchmarks/results/[\w.{},*-]+\.json")
# A path after --out in a command line is where a run would write, not a figure's source.
OUT_ARGUMENT = re.compile(r"--out\s+$")
SCRIPT_AND_RESULT = re.compile(r"`(benchmarks/\w+\.py)`\s*→\s*`(benchmarks/results/[\w.-]+\.json)`")
SCRIPT = re.compile(r"`(benchmarks/\w+\.py)`")

_EVAL_SKAB = "written by `appliance eval skab` (appliance/eval/skab.py), which records no machine block"
_NO_MACHINE = "written by benchmarks/detector_process.py or detector_next_day.py before they recorded the machine"
_NO_LIBRARIES = "written through benchmarks.common before it recorded library versions"
LEGACY: dict[str, str] = {
    **{name: _EVAL_SKAB for name in (
        "skab_changes_member.json", "skab_conf99.json", "skab_distance_member.json", "skab_frozen.json",
        "skab_pca_off.json")},
    **{name: _NO_MACHINE for name in (
        "detector_next_day.json", "detector_next_day_pca_rows.json", "detector_process_before.json",
        "detector_process_conf95.json", "detector_process_conf98.json",
        "detector_process_distance_margin1.0.json", "detector_process_distance_margin1.1.json",
        "detector_process_early_stopping.json", "detector_process_h10.json",
        "detector_process_h20_frozen_no_member.json", "detector_process_h20_hidden128.json",
        "detector_process_h20_no_frozen.json", "detector_process_no_distance.json",
        "detector_process_one_point_conf95.json", "detector_process_one_point_conf98.json",
        "detector_process_one_point_distance_margin1.0.json", "detector_process_one_point_distance_margin1.1.json",
        "detector_process_one_point_h1.json", "detector_process_one_point_h10.json",
        "detector_process_one_point_h20_frozen_no_member.json", "detector_process_one_point_h20_no_frozen.json",
        "detector_process_one_point_no_distance.json", "detector_process_pca_changes.json",
        "detector_process_pca_rows.json", "detector_process_pooled.json")},
    **{name: _NO_LIBRARIES for name in (
        "detector_process_one_point.json", "detectability.json",
        "detectability_one_point.json", "peer.json", "soak.json", "sync.json", "web.json")},
}


def expand_braces(pattern: str) -> list[str]:
    """``a{,_b}{_c,_d}.json`` -> every combination, as a shell expands it (no nesting)."""
    parts = re.split(r"\{([^{}]*)\}", pattern)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(combo) for combo in itertools.product(*choices)]


def cited_paths(text: str) -> list[str]:
    """Every results path in ``text`` (braces expanded), leaving out ``--out PATH`` arguments."""
    found = []
    for m in RESULT_PATH.finditer(text):
        if not OUT_ARGUMENT.search(text[max(0, m.start() - 20):m.start()]):
            found.extend(expand_braces(m.group(0)))
    return found


def result_files(cited: str) -> list[Path]:
    """The files a cited path stands for (a glob may stand for several; none found: an empty list)."""
    return sorted(ROOT.glob(cited)) if "*" in cited else [ROOT / cited] if (ROOT / cited).exists() else []


def all_citations() -> dict[str, list[str]]:
    """Cited path -> the documents citing it."""
    citations: dict[str, list[str]] = {}
    for doc in DOCUMENTS:
        for path in cited_paths(doc.read_text()):
            citations.setdefault(path, []).append(doc.name)
    return citations


def has_machine_block(path: Path) -> bool:
    doc = json.loads(path.read_text())
    return (isinstance(doc, dict) and all(doc.get(k) not in (None, "") for k in MACHINE_KEYS)
            and isinstance(doc["libraries"], dict) and bool(doc["libraries"]))


def performance_rows() -> list[str]:
    """The rows of the README's "Measured" table (after its header and separator)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Measured", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return rows[2:]


def test_brace_expansion_and_out_arguments():
    assert expand_braces("benchmarks/results/a{,_x}{_p,_q}.json") == [
        "benchmarks/results/a_p.json", "benchmarks/results/a_q.json",
        "benchmarks/results/a_x_p.json", "benchmarks/results/a_x_q.json"]
    text = "see `benchmarks/results/a.json`; run `x.py --out benchmarks/results/b.json`"
    assert cited_paths(text) == ["benchmarks/results/a.json"]


def test_documents_cite_result_files():
    assert len(all_citations()) >= 10, "the documents name fewer result files than they did: the regex broke?"


@pytest.mark.parametrize("cited", sorted(all_citations()))
def test_cited_result_file_exists_and_says_where_it_ran(cited):
    files = result_files(cited)
    assert files, f"{cited} (named in {', '.join(all_citations()[cited])}) is not committed"
    for path in files:
        if path.name in LEGACY:
            assert not has_machine_block(path), (
                f"{path.name} now carries the machine block: remove it from LEGACY in {Path(__file__).name}")
        else:
            assert has_machine_block(path), (
                f"{path.relative_to(ROOT)} has no machine/version block ({', '.join(MACHINE_KEYS)}): "
                "write it with benchmarks.common.write_results")


def test_legacy_entries_are_still_cited():
    cited = {p.name for c in all_citations() for p in result_files(c)}
    stale = sorted(set(LEGACY) - cited)
    assert not stale, f"no longer named by any document, remove from LEGACY: {stale}"


def test_performance_table_names_a_result_file_beside_each_script():
    rows = performance_rows()
    assert len(rows) >= 5, "the README's Measured table was not found"
    for row in rows:
        paired = {script for script, _ in SCRIPT_AND_RESULT.findall(row)}
        for script in SCRIPT.findall(row):
            assert script in paired, f"README row names {script} without its result file beside it: {row[:100]}"
            assert (ROOT / script).exists(), f"{script} does not exist"
        for script, result in SCRIPT_AND_RESULT.findall(row):
            stem = Path(result).stem
            assert (ROOT / result).exists(), f"{result} (beside {script}) is not committed"
            assert stem == Path(script).stem or stem.startswith(Path(script).stem + "_"), (
                f"{result} does not look like {script}'s output")
