"""Every figure in README.md and benchmarks/README.md comes from a results file that a benchmark wrote
(``make bench`` -> benchmarks/results/*.json), or is dated with its commit. Fast: reads files, runs no
benchmark. The convention is in benchmarks/readme_figures.py."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import _results  # noqa: E402
import readme_figures as figs  # noqa: E402

README, BENCH_README = figs.DOCS


@pytest.mark.parametrize("doc", figs.DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_linked_figure_equals_its_results_file(doc):
    n, problems = figs.check_links(doc)
    assert n >= (30 if doc == README else 5), f"{doc.name}: only {n} figures linked to results files"
    assert not problems, "\n".join(problems) + "\n(python benchmarks/readme_figures.py --fix after a rerun)"


@pytest.mark.parametrize("doc", figs.DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_figure_in_a_figure_section_is_linked_or_dated(doc):
    assert figs.regions(doc), f"{doc.name} has no figure section"
    assert not figs.unsourced(doc), "\n".join(figs.unsourced(doc))


def test_dated_figures_name_a_commit_of_this_repository():
    dated = {c for doc in figs.DOCS for _, c in figs.stamps(doc)}
    assert dated
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    unknown = [c for c in sorted(dated) if subprocess.run(["git", "cat-file", "-e", f"{c}^{{commit}}"], cwd=ROOT,
                                                          capture_output=True).returncode]
    assert not unknown, f"stamps name commits that are not in this repository: {unknown}"


def test_every_results_file_says_when_where_how_and_with_which_caches():
    files = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert files
    for f in files:
        doc = json.loads(f.read_text())
        assert doc["name"] == f.stem and doc["caches"] in ("cold", "warm"), f.name
        assert doc["date"][:4].isdigit() and doc["commit"] and doc["command"].startswith("python benchmarks/"), f.name
        assert {"cpu", "cores", "torch"} <= set(doc["machine"]), f.name
        assert doc["figures"] and all(not isinstance(v, float) or math.isfinite(v) for v in doc["figures"].values())


def test_the_checker_fails_a_wrong_a_missing_and_a_bare_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_BENCH_RESULTS", str(tmp_path / "results"))
    _results.write("demo", {"worst_s": 4.87, "acc": 0.9136}, caches="cold", params={"students": 30})
    doc = tmp_path / "doc.md"

    def check(body):
        doc.write_text(f"{figs.OPEN}\n\n{body}\n\n{figs.CLOSE}\n")
        return figs.check_links(doc)[1] + figs.unsourced(doc)

    ok = ('[4.9 s](results/demo.json "worst_s") and [91.4%](results/demo.json "acc"), goal ≤ 10 s; '
          "sampled every 20 ms")
    assert check(ok) == []
    assert check(ok.replace("4.9 s", "5.0 s"))  # disagrees with the file
    assert check(ok.replace('"acc"', '"accuracy"'))  # no such figure
    assert check(ok.replace("demo.json", "gone.json"))  # no such file
    assert check(ok + "; it took 12.5 s")  # a bare figure
    assert check("| run | wall s |\n|---|---:|\n| a | 12.5 |")  # a bare figure in a table
    assert check(ok + "; it took 12.5 s (measured 2026-11-29, commit 3e7d732)") == []  # dated
    dated_table = "(measured 2026-11-29, commit 3e7d732):\n\n| run | wall s |\n|---|---:|\n| a | 12.5 |"
    assert check(dated_table) == []
    assert check(dated_table + "\n\nA new class took 9.5 s.")  # the table's date does not cover what follows


def test_results_write_refuses_what_cannot_be_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_BENCH_RESULTS", str(tmp_path))
    with pytest.raises(ValueError, match="cold"):
        _results.write("x", {"a_s": 1.0}, caches="hot")
    with pytest.raises(ValueError, match="finite"):
        _results.write("x", {"a_s": float("nan")}, caches="cold")
    with pytest.raises(ValueError, match="letters"):
        _results.write("../x", {"a_s": 1.0}, caches="cold")
    assert not list(tmp_path.iterdir())
