"""The skeleton of the training stages: what runs in which order, what is cleared when."""

from contextlib import contextmanager

import pytest
import torch

import stages.training as training
from pipeline.config import parse_config
from tests.conftest import synthetic_data


class RecordingRun:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


@pytest.fixture
def stage_env(tmp_path, monkeypatch):
    """stages.training with the MLflow run, the data and the checkpoint folder faked."""
    run, cleared = RecordingRun(), []

    @contextmanager
    def tracked_stage(cfg, stage, inputs):
        run.calls.append(("tracked_stage", stage, inputs))
        yield run

    monkeypatch.setattr(training, "tracked_stage", tracked_stage)
    monkeypatch.setattr(training, "load_prepared", lambda folder: synthetic_data())
    monkeypatch.setattr(training, "stage_checkpoints", lambda *a: tmp_path / "checkpoints")
    monkeypatch.setattr(training, "clear_checkpoints", cleared.append)
    return run, cleared


CFG = parse_config(
    {"seed": 3, "train": {"device": "cpu", "precision": "fp32", "memory_format": "contiguous"}}
)


def test_the_stage_is_seeded_after_its_inputs_are_loaded(stage_env):
    run, cleared = stage_env

    def load():  # building a model draws random numbers
        torch.rand(5)
        return "compact model"

    with training.training_stage(CFG, "finetune", ["inputs"], load=load) as stage:
        drawn = torch.rand(1)
        assert stage.loaded == "compact model"
        assert stage.device == torch.device("cpu")
        assert stage.numerics == {"precision": "fp32", "memory_format": "contiguous"}
        assert stage.checkpoints.name == "checkpoints"
    torch.manual_seed(3)
    assert torch.equal(drawn, torch.rand(1))
    assert run.calls[0] == ("tracked_stage", "finetune", ["inputs"])
    assert run.calls[1] == (
        "set_tags",
        {"train.precision": "fp32", "train.memory_format": "contiguous"},
    )
    assert run.calls[2] == (
        "log_params",
        {f"finetune.{k}": v for k, v in CFG.finetune.model_dump().items()},
    )
    assert cleared == ["finetune"]


def test_checkpoints_stay_after_a_failure_and_on_other_ranks(stage_env, monkeypatch):
    _, cleared = stage_env
    with pytest.raises(RuntimeError), training.training_stage(CFG, "search", []):
        raise RuntimeError("killed mid-search")
    assert cleared == []  # the next run resumes from them
    monkeypatch.setattr(training.distributed, "is_main", lambda: False)
    with training.training_stage(CFG, "search", []):
        pass
    assert cleared == []  # rank 0 clears, once it has written the outputs


def test_a_chart_is_drawn_into_a_temporary_folder_and_logged_as_a_plot(stage_env):
    run, _ = stage_env
    with training.training_stage(CFG, "search", []) as stage:
        stage.log_chart(lambda folder: _touch(folder / "curves.png"))
    ((_, path, kind),) = [c for c in run.calls if c[0] == "log_artifact"]
    assert (path.name, kind) == ("curves.png", "plots")
    assert not path.parent.exists()


def _touch(path):
    path.write_bytes(b"png")
    return path
