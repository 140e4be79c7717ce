"""Every measured figure of the README and docs/, regenerated from the committed records
in ``benchmarks/results/*.json``.

A generated block sits between two markers in a Markdown file::

    <!-- generated:NAME: uv run python benchmarks/published.py -->
    ...
    <!-- end generated:NAME -->

Some documents are generated whole (``WHOLE_FILES``). ``uv run python benchmarks/published.py``
rewrites every block and file from the records; ``--check`` writes nothing and exits 1
naming each one whose committed text differs (the test suite runs the same check).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import comparison_report as comparison
import performance_report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COMMAND = "uv run python benchmarks/published.py"


def records(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def readme_comparison() -> str:
    store = records("compare_methods")
    return "\n".join(
        [
            *comparison.headline_table(store),
            "",
            comparison.verdict_sentence(store),
        ]
    )


def comparison_doc() -> str:
    store = records("compare_methods")
    plots = {
        cell: f"comparison_{comparison.cell_name(cell).replace(':', '_')}.png"
        for cell in comparison.cells(store)
    }
    return comparison.comparison_markdown(store, plots)


def pretrained_start_doc() -> str:
    import pretrained_start

    return pretrained_start.report_text(records("pretrained_start"))


# (file, block name) -> the text between the block's markers
BLOCKS: dict[tuple[str, str], Callable[[], str]] = {
    ("README.md", "comparison"): readme_comparison,
}
BLOCKS.update(performance_report.BLOCKS)
# file -> its whole text
WHOLE_FILES: dict[str, Callable[[], str]] = {
    "docs/comparison.md": comparison_doc,
    "docs/pretrained_start.md": pretrained_start_doc,
}


def begin_marker(name: str) -> str:
    return f"<!-- generated:{name}: {COMMAND} -->"


def end_marker(name: str) -> str:
    return f"<!-- end generated:{name} -->"


def replace_block(text: str, name: str, body: str, where: str = "the text") -> str:
    """``text`` with the block ``name``'s body replaced; the markers must be there once."""
    pattern = re.compile(
        re.escape(begin_marker(name)) + r"\n.*?" + re.escape(end_marker(name)), re.DOTALL
    )
    found = len(pattern.findall(text))
    if found != 1:
        raise ValueError(
            f"{where}: expected the block '{name}' once, found it {found} times; "
            f"put '{begin_marker(name)}' and '{end_marker(name)}' on lines of their own "
            "where the generated text belongs"
        )
    replacement = f"{begin_marker(name)}\n{body.rstrip()}\n{end_marker(name)}"
    return pattern.sub(lambda _: replacement, text)


def generated(root: Path = ROOT) -> dict[str, str]:
    """The text every published file should have: path -> text."""
    texts = {path: render().rstrip() + "\n" for path, render in WHOLE_FILES.items()}
    for (path, name), render in BLOCKS.items():
        current = texts.get(path) or (root / path).read_text()
        texts[path] = replace_block(current, name, render(), where=path)
    return texts


def stale(root: Path = ROOT) -> list[str]:
    """The published files whose committed text differs from what the records generate."""
    return [path for path, text in generated(root).items() if (root / path).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if any differs")
    args = p.parse_args(argv)
    if args.check:
        differing = stale()
        for path in differing:
            print(f"{path}: differs from what the records generate; run `{COMMAND}`")
        return 1 if differing else 0
    for path, text in generated().items():
        target = ROOT / path
        if target.read_text() != text:
            target.write_text(text)
            print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
