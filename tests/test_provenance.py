"""Provenance records (pipeline.provenance) and the rebuild's checks (pipeline.reproduce).

DVC-compatible hashes are checked against DVC itself (`dvc add` in a throw-away project);
the end-to-end rebuild is in tests/e2e/test_reproduce.py.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ArtifactError, PipelineError
from pipeline.provenance import collect, dvc_md5, dvc_stage_deps, dvcignore, record_tags
from pipeline.reproduce import commit_to_rebuild, compare, rebuild, report
from pipeline.tracking import RecordedModelVersion, file_md5, input_hash_tags

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        [*GIT, "-C", str(root), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_directory_hash_is_the_one_dvc_records(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub" / "__pycache__").mkdir(parents=True)
    (data / "a.txt").write_text("a\r\nb\n")  # DVC 3 hashes text as is (no dos2unix)
    (data / "sub" / "b.bin").write_bytes(bytes(range(256)))
    (data / "sub" / "__pycache__" / "c.pyc").write_bytes(b"ignored")
    (tmp_path / ".dvcignore").write_text("# comment\n__pycache__/\n")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "add", "-q", "data"], cwd=tmp_path, check=True, capture_output=True)
    recorded = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]["md5"]

    assert dvc_md5(data, tmp_path, dvcignore(tmp_path)) == recorded
    assert file_md5(data, tmp_path) == recorded
    assert dvc_md5(data) != recorded  # without .dvcignore the .pyc counts
    assert file_md5(data / "a.txt") == hashlib.md5(b"a\r\nb\n").hexdigest()
    with pytest.raises(ArtifactError, match="does not exist"):
        dvc_md5(tmp_path / "missing")


def test_file_hash_is_plain_md5(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    assert dvc_md5(tmp_path / "a") == "0cc175b9c0f1b6a831c399e269772661"
    tags = input_hash_tags([tmp_path / "a"])
    assert tags == {f"input.{(tmp_path / 'a').as_posix()}": "0cc175b9c0f1b6a831c399e269772661"}


def make_project(root: Path) -> None:
    (root / "pipeline").mkdir()
    (root / "pipeline" / "code.py").write_text("x = 1\n")
    (root / "params.yaml").write_text("seed: 3\n")
    (root / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: python -m x\n"
        "    deps: [pipeline, params.yaml, missing.csv]\n    outs: [model]\n"
    )
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-qm", "init")


def test_record_of_a_stage_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_project(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    record = collect(tmp_path, {"seed": 3}, "train")

    assert record["git"]["commit"] == git(tmp_path, "rev-parse", "HEAD")
    assert record["git"]["dirty"] is False  # repository and branch: test_provenance_source.py
    assert record["params"] == {"seed": 3} and record["params_yaml"] == "seed: 3\n"
    # Declared deps that exist, hashed as DVC does; a missing one is left out.
    assert record["dvc"] == {
        "stage": "train",
        "deps": {
            "pipeline": dvc_md5(tmp_path / "pipeline"),
            "params.yaml": dvc_md5(tmp_path / "params.yaml"),
        },
    }
    assert set(record["packages"]) == {
        "python", "torch", "torchvision", "onnx", "onnxruntime", "mlflow", "dvc", "numpy"
    }  # fmt: skip
    assert record["device"]["torch"] == "cpu" and record["device"]["torch_threads"] >= 1
    json.dumps(record)  # logged as a JSON artifact, possibly spooled

    tags = record_tags(record)
    assert tags["git.dirty"] == "false" and tags["dvc.experiment"] == "exp-1"
    assert tags["version.dvc"] == record["packages"]["dvc"]
    assert dvc_stage_deps(tmp_path, "unknown-stage") == {}

    (tmp_path / "pipeline" / "code.py").write_text("x = 2\n")
    assert collect(tmp_path, {}, "train")["git"]["dirty"] is True


def test_record_outside_git_and_dvc(tmp_path: Path) -> None:
    record = collect(tmp_path, {}, "train")
    assert record["git"] == {"commit": None, "dirty": None, "repository": None, "branch": None}
    assert record["dvc"]["deps"] == {} and record["params_yaml"] is None
    assert record_tags(record)["git.dirty"] == "unknown"


def recorded_version(record: dict, metrics: dict, arch: str = "abc") -> RecordedModelVersion:
    return RecordedModelVersion(
        "compact-cnn", "1", "run1", {"arch_sha256": arch}, {}, metrics, record
    )


GOOD = {"git": {"commit": "f" * 40, "dirty": False}, "params_yaml": "seed: 0\n"}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({**GOOD, "git": {"commit": None, "dirty": None}}, "not run in a git repository"),
        ({**GOOD, "git": {"commit": "f" * 40, "dirty": True}}, "uncommitted code changes"),
        ({**GOOD, "git": {"commit": "f" * 40, "dirty": None}}, "uncommitted code changes"),
        ({**GOOD, "params_yaml": None}, "recorded no params.yaml"),
    ],
)
def test_runs_that_cannot_be_rebuilt_are_refused(record: dict, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        commit_to_rebuild(recorded_version(record, {}))
    assert commit_to_rebuild(recorded_version(GOOD, {})) == "f" * 40


def test_rebuild_refuses_a_used_folder_or_an_unknown_commit(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    make_project(source)
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    with pytest.raises(PipelineError, match="not empty"):
        rebuild(recorded_version(GOOD, {}), source, used, echo=lambda _: None)
    assert (used / "keep.txt").read_text() == "mine"
    with pytest.raises(PipelineError, match="not in the repository"):
        rebuild(recorded_version(GOOD, {}), source, tmp_path / "new", echo=lambda _: None)
    assert not (tmp_path / "new").exists()


def test_compare_ignores_timings_and_reports_differences(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    rebuilt = {"arch_sha256": "abc", "top1": 0.75, "flops": 1000, "latency_ms": 9.0, "speedup": 2}
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(rebuilt))
    (tmp_path / "dvc.lock").write_text(
        yaml.safe_dump(
            {"stages": {"evaluate": {"deps": [{"path": "models/model.onnx", "md5": "m2"}]}}}
        )
    )
    record = {**GOOD, "dvc": {"stage": "evaluate", "deps": {"models/model.onnx": "m1"}}}
    recorded = {"top1": 0.75, "flops": 1000.0, "latency_ms": 3.0, "speedup": 1.0}

    same = compare(recorded_version(record, recorded), tmp_path)
    assert same.reproduced
    assert [c.name for c in same.checks] == ["arch_sha256", "flops", "top1"]  # no timings
    assert [(c.name, c.same) for c in same.inputs] == [("models/model.onnx", False)]
    assert "DIFFERENT models/model.onnx: m1 | m2" in "\n".join(report(same))

    other_arch = compare(recorded_version(record, recorded, arch="xyz"), tmp_path)
    assert not other_arch.reproduced
    other_top1 = compare(
        recorded_version(record, recorded | {"top1": 0.7500001}), tmp_path, tolerance=0.0
    )
    assert not other_top1.reproduced
    assert report(other_top1)[-1].startswith("NOT reproduced")
    with pytest.raises(PipelineError, match="did not finish"):
        compare(recorded_version(record, recorded), tmp_path / "empty")
