"""train() on streamed (sharded) data: a run killed mid-epoch resumes at the batch where
its last save was and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import pytest
import torch

import pipeline.train as training
from pipeline.data import prepare_dataset
from pipeline.models import create_model
from pipeline.train import seed_everything, train
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "prepared"
    return prepare_dataset("digits", None, out, image_size=8, max_memory_mb=0)


def run(data, checkpoint=None):
    settings = tiny_config(train={"workers": 0, "precision": "fp32"}, search={"method": "l1"}).train
    seed_everything(0)
    model = create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    history = train(
        model,
        data,
        epochs=2,
        lr=0.05,
        settings=settings,
        seed=0,
        device=torch.device("cpu"),
        checkpoint=checkpoint,
        fingerprint="streamed",
    )
    return model, history


def test_a_run_killed_mid_epoch_resumes_there_and_ends_as_an_uninterrupted_one(
    streamed, tmp_path, monkeypatch
):
    monkeypatch.setattr(training, "MID_EPOCH_CHUNK_STEPS", 4)
    reference, reference_history = run(streamed)

    monkeypatch.setattr(training, "MID_EPOCH_SAVE_S", 0.0)  # save after every chunk
    steps = training.train_steps
    calls = []

    def killed_on_the_sixth_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # epoch 1 has 33 steps: its chunks 1-5 are done and saved
            raise KeyboardInterrupt
        return steps(*args, **kwargs)

    monkeypatch.setattr(training, "train_steps", killed_on_the_sixth_chunk)
    checkpoint = tmp_path / "train.pt"
    with pytest.raises(KeyboardInterrupt):
        run(streamed, checkpoint)
    saved = torch.load(checkpoint, weights_only=True)
    assert (saved["epoch"], saved["place"]["batch"]) == (0, 20)

    monkeypatch.setattr(training, "train_steps", steps)
    resumed, history = run(streamed, checkpoint)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert [round(h["train_loss"], 6) for h in history] == [
        round(h["train_loss"], 6) for h in reference_history
    ]
