"""End to end: bad input through the real entry points (``python -m stages.<name>``, ``jst``)
exits non-zero with one message naming the field or file, no traceback, nothing written.

Each case runs in its own process in its own directory (the stages' working directory is
their repository root). Importing torch & co. costs ~10-20 s per process on the 2-core CI
machine, so one driver process imports the third-party libraries once and forks a child
per case; the child imports the project fresh and runs the module as ``__main__`` exactly
like ``python -m`` does, so its exit status and output are the command's own.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.artifacts import save_compact
from pipeline.data import save_prepared
from pipeline.errors import PipelineError, TrainingDiverged
from pipeline.progress import console
from pipeline.pruning.slicing import build_model, dense_spec
from pipeline.pruning.spec import ArchSpec
from stages.common import run_stage
from tests.conftest import synthetic_data
from tests.e2e.e2e_repo import PROJECT_ROOT, subprocess_env

PARAMS: dict = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
_DENSE = dense_spec("resnet20", (1, 8, 8), 4)
COMPACT = ArchSpec("resnet20", (1, 8, 8), 4, {g: max(1, w // 2) for g, w in _DENSE.widths.items()})

DRIVER = r"""
import json, os, runpy, sys, time, traceback
started = time.monotonic()
sys.path.insert(0, sys.argv[1])  # the project; the cases' folders hold no code
# The library and its dependencies, once; stages.* (whose paths come from the working
# directory) and the CLI are imported fresh in each case's child.
import torch, torchvision  # noqa: F401
torch.set_num_threads(1)  # no intra-op thread pool for the forked children to inherit
import pipeline.artifacts, pipeline.config, pipeline.data, pipeline.methods  # noqa: F401
import pipeline.models, pipeline.plots, pipeline.tracking, pipeline.train  # noqa: F401
statuses, seconds = [], [time.monotonic() - started]
for case in json.loads(sys.argv[2]):
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.chdir(case["cwd"])
        log = os.open(case["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.argv = case["argv"]
        code = 0
        try:  # what the interpreter does for `python -m module args...`
            runpy.run_module(case["module"], run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (exit.code is not None)
            if exit.code is not None and not isinstance(exit.code, int):
                print(exit.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code))
    statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    seconds.append(time.monotonic() - started)
print(json.dumps({"statuses": statuses, "seconds": seconds}))
"""


@dataclass
class Case:
    """One bad input: a folder set up as a repository, the command, what must be named."""

    name: str
    module: str
    names: list[str]
    argv: list[str] = field(default_factory=list)
    cwd: Path = Path()
    before: dict = field(default_factory=dict)
    status: int | None = None
    output: str = ""


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _params(cwd: Path, **changes) -> None:
    """The shipped params.yaml with ``{"a.b.c": value}`` changes."""
    params = json.loads(json.dumps(PARAMS))
    for dotted, value in changes.items():
        *sections, key = dotted.split(".")
        node = params
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    (cwd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _earlier_outputs(cwd: Path) -> None:
    """Outputs of an earlier successful run, which a failing stage must leave alone."""
    (cwd / "metrics").mkdir()
    (cwd / "metrics" / "prepare.json").write_text('{"sizes": {"train": 1}}\n')
    save_prepared(synthetic_data(), cwd / "data" / "prepared")


def _image_folder(cwd: Path, bad: str, content: bytes) -> None:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        folder = cwd / "data" / "raw" / name
        folder.mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    (cwd / "data" / "raw" / bad).write_bytes(content)


def _compact_model(cwd: Path, arch_json: str) -> None:
    """A valid compact model (weights included) whose arch.json is then replaced."""
    save_compact(cwd / "models" / "compact", COMPACT, build_model(COMPACT))
    (cwd / "models" / "compact" / "arch.json").write_text(arch_json)


def _cases(tmp: Path) -> list[Case]:
    cases = [
        Case("nan", "stages.prepare", ["search.jst.delta", "finite"]),
        Case("bool-as-int", "stages.search", ["train.batch_size", "boolean"]),
        Case("list-item", "stages.prepare", ["evaluate.batch_sizes.1", "integer"]),
        Case("huge", "stages.finetune", ["search.jst.iterations", "less than"]),
        Case("unknown-key", "stages.export", ["search.jst.deltaa", "unknown parameter"]),
        Case("markup-key", "stages.prepare", ["data.[/]root", "unknown parameter"]),
        Case("section-type", "stages.evaluate", ["train.augment", "section"]),
        Case("not-utf8", "stages.prepare", ["params.yaml", "UTF-8"]),
        Case("truncated-png", "stages.prepare", ["dog/3.png", "Cannot read image"]),
        Case("text-as-jpg", "stages.prepare", ["cat/notes.jpg", "Cannot read image"]),
        Case("arch-truncated", "pipeline.cli", ["models/compact/arch.json", "not valid JSON"]),
        Case("arch-too-wide", "pipeline.cli", ["models/compact/arch.json", "widths.stem"]),
        Case("arch-unknown-model", "pipeline.cli", ["models/compact/arch.json", "model:"]),
    ]
    for case in cases:
        case.cwd = tmp / case.name
        case.cwd.mkdir()
        _params(case.cwd)
        _earlier_outputs(case.cwd)
    by_name = {case.name: case.cwd for case in cases}
    _params(by_name["nan"], **{"search.jst.delta": math.nan})
    _params(by_name["bool-as-int"], **{"train.batch_size": True})
    _params(by_name["list-item"], **{"evaluate.batch_sizes": [1, "many"]})
    _params(by_name["huge"], **{"search.jst.iterations": 10**15})
    _params(by_name["unknown-key"], **{"search.jst.deltaa": 0.1})
    _params(by_name["markup-key"], **{"data.[/]root": "[bold]data"})  # rich markup, printed
    _params(by_name["section-type"], **{"train.augment": [1, 2]})
    text = (by_name["not-utf8"] / "params.yaml").read_bytes()
    (by_name["not-utf8"] / "params.yaml").write_bytes(text.replace(b"seed: 0", b"seed: \xff0"))
    for name, bad, content in [
        ("truncated-png", "dog/3.png", None),
        ("text-as-jpg", "cat/notes.jpg", Path(__file__).read_bytes()),
    ]:
        cwd = by_name[name]
        _params(cwd, **{"data.dataset": "imagefolder", "data.root": "data/raw"})
        _image_folder(cwd, bad, b"")
        if content is None:  # a real PNG cut short inside its pixel data
            whole = (cwd / "data" / "raw" / "dog" / "2.png").read_bytes()
            content = whole[: len(whole) // 2]
        (cwd / "data" / "raw" / bad).write_bytes(content)
    compact = COMPACT.to_dict()
    _compact_model(by_name["arch-truncated"], json.dumps(compact)[:40])
    _compact_model(
        by_name["arch-too-wide"],
        json.dumps({**compact, "widths": {**compact["widths"], "stem": 17}}),
    )
    _compact_model(by_name["arch-unknown-model"], json.dumps({**compact, "model": "resnet9000"}))
    for case in cases:
        case.argv = (
            ["jst", "inspect", "models/compact"] if case.module == "pipeline.cli" else [case.module]
        )
        case.before = _snapshot(case.cwd)
    return cases


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> list[Case]:
    tmp = tmp_path_factory.mktemp("bad-input")
    cases = _cases(tmp)
    payload = [
        {"cwd": str(c.cwd), "log": str(tmp / f"{c.name}.log"), "argv": c.argv, "module": c.module}
        for c in cases
    ]
    env = subprocess_env()
    env["COLUMNS"] = "200"
    driver = subprocess.run(
        [sys.executable, "-c", DRIVER, str(PROJECT_ROOT), json.dumps(payload)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    result = json.loads(driver.stdout.strip().splitlines()[-1])
    statuses = result["statuses"]
    print("driver seconds (imports, then per case):", [round(s, 1) for s in result["seconds"]])
    for case, status in zip(cases, statuses, strict=True):
        case.status = status
        case.output = (tmp / f"{case.name}.log").read_text(errors="replace")
    return cases


CASE_NAMES = [
    "nan",
    "bool-as-int",
    "list-item",
    "huge",
    "unknown-key",
    "markup-key",
    "section-type",
    "not-utf8",
    "truncated-png",
    "text-as-jpg",
    "arch-truncated",
    "arch-too-wide",
    "arch-unknown-model",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_exits_non_zero_with_one_clear_message(outcomes, name):
    case = next(c for c in outcomes if c.name == name)
    report = f"{case.argv} in {case.cwd} exited {case.status}:\n{case.output}"
    assert case.status == 1, report
    assert "Traceback" not in case.output, report
    assert case.output.count("error:") == 1, report
    flat = " ".join(case.output.split())
    for name_ in case.names:
        assert name_ in flat, f"{name_!r} not named. {report}"
    assert _snapshot(case.cwd) == case.before, f"files changed. {report}"


@settings(derandomize=True, deadline=None, max_examples=100)
@given(st.one_of(st.text(), st.text(alphabet="[]/\\bold red=@#: ", max_size=24)))
def test_run_stage_prints_any_error_message_as_is(message):
    """Messages quote user input (keys, values, paths): never parsed as rich markup."""

    def main() -> None:
        raise PipelineError(message)

    with console.capture() as captured, pytest.raises(SystemExit) as exit_:
        run_stage(main)
    assert exit_.value.code == 1
    if message.isprintable():
        assert message in captured.get()


def test_divergence_message_names_the_stage():
    def main() -> None:
        raise TrainingDiverged("finetune epoch 2/3: training diverged: the loss became nan")

    main.__module__ = "stages.finetune"
    with console.capture() as captured, pytest.raises(SystemExit) as exit_:
        run_stage(main)
    assert exit_.value.code == 1
    assert "error: stage finetune: finetune epoch 2/3: training diverged" in captured.get()
