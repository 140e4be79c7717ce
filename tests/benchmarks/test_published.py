"""Every published figure regenerates from the committed records (benchmarks/published.py)."""

from __future__ import annotations

import shutil

import pytest


def test_the_committed_readme_and_docs_are_what_the_committed_records_generate(published):
    assert published.stale() == [], "run `uv run python benchmarks/published.py` and commit"


def test_a_figure_edited_by_hand_is_caught(published, tmp_path):
    for path in {p for p, _ in published.BLOCKS} | set(published.WHOLE_FILES):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(published.ROOT / path, tmp_path / path)
    assert published.stale(tmp_path) == []
    readme = tmp_path / "README.md"
    text = readme.read_text()
    begin = text.index(published.begin_marker("comparison"))
    row = text.index("| ResNet-20", begin)
    cell = text.index(" | ", text.index(" | ", row) + 3) + 3  # the JST top-1 of the first row
    readme.write_text(text[:cell] + "9" + text[cell + 1 :])
    assert published.stale(tmp_path) == ["README.md"]


def test_a_missing_block_is_named_with_the_markers_to_add(published):
    with pytest.raises(ValueError, match="generated:comparison") as err:
        published.replace_block("no markers here", "comparison", "| table |", where="README.md")
    assert "README.md" in str(err.value)


def test_every_plot_the_comparison_shows_is_committed(published):
    text = (published.ROOT / "docs/comparison.md").read_text()
    plots = [line[len("![Pareto](") : -1] for line in text.splitlines() if line.startswith("![")]
    assert plots and all((published.ROOT / "docs" / p).is_file() for p in plots)
