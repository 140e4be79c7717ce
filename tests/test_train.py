"""The training step's speed settings: what auto picks per device, applied where asked."""

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.config import load_config, parse_config
from pipeline.errors import PipelineError
from pipeline.train import (
    autocast_dtype,
    calibration_batches,
    gpu_data_limit,
    make_loader,
    make_optimizer,
    recalibrate_bn,
    train_steps,
    training_numerics,
    uses_channels_last,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
ROOT = Path(__file__).resolve().parents[1]


def settings(**train):
    return parse_config({"train": train}).train


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def batches(count: int = 3):
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(6, 3, 8, 8, generator=gen), torch.randint(0, 4, (6,), generator=gen))
        for _ in range(count)
    ]


def run_steps(train_settings, net=None):
    net = net or tiny_net()
    optimizer = make_optimizer(net, 0.1, train_settings)
    stats = train_steps(net, iter(batches()), 3, optimizer, train_settings)
    return net, stats


@pytest.fixture(params=[True, False], ids=["amx", "no-amx"])
def amx(request, monkeypatch):
    """This CPU with and without bf16 matrix units (the hardware probe, answered)."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: request.param)
    return request.param


def test_auto_is_fast_on_cuda_and_on_cpus_with_matrix_units_else_plain_fp32(amx, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    auto = settings(precision="auto")
    assert autocast_dtype(auto, CPU) == (torch.bfloat16 if amx else None)
    assert uses_channels_last(auto, CPU) == amx
    assert training_numerics(auto, CPU) == (
        {"precision": "bf16", "memory_format": "channels_last"}
        if amx
        else {"precision": "fp32", "memory_format": "contiguous"}
    )
    assert gpu_data_limit(auto, CPU) is None
    assert uses_channels_last(auto, CUDA)
    assert gpu_data_limit(settings(gpu_data_max_mb=3), CUDA) == 3 * 2**20
    assert autocast_dtype(settings(precision="fp32"), CUDA) is None
    assert autocast_dtype(settings(precision="fp32"), CPU) is None
    assert training_numerics(settings(precision="fp32", memory_format="contiguous"), CPU) == {
        "precision": "fp32",
        "memory_format": "contiguous",
    }


def test_auto_without_matrix_units_leaves_cpu_training_bit_for_bit_unchanged(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    auto_net, auto_stats = run_steps(settings(precision="auto"))
    plain_net, plain_stats = run_steps(settings(precision="fp32", memory_format="contiguous"))
    assert auto_stats == plain_stats
    for auto_param, plain_param in zip(auto_net.parameters(), plain_net.parameters(), strict=True):
        assert torch.equal(auto_param, plain_param)


def test_shipped_params_train_alike_on_cpus_with_and_without_matrix_units(monkeypatch):
    """The quickstart's params.yaml resolves to the same numerics whichever way the AMX
    probe answers, and trains bit for bit the same, so a clean clone's `dvc repro` gives
    the committed architecture on either kind of CPU; `auto` (one parameter away) does
    differ, which is what the shipped default avoids."""
    shipped = load_config(ROOT / "params.yaml").train
    resolved, trained = {}, {}
    for has_amx in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda has_amx=has_amx: has_amx)
        resolved[has_amx] = training_numerics(shipped, CPU)
        trained[has_amx] = run_steps(shipped)
        auto = training_numerics(shipped.model_copy(update={"precision": "auto"}), CPU)
        assert auto["precision"] == ("bf16" if has_amx else "fp32")
    assert resolved[True] == resolved[False] == {"precision": "fp32", "memory_format": "contiguous"}
    (amx_net, amx_stats), (plain_net, plain_stats) = trained[True], trained[False]
    assert amx_stats == plain_stats
    for amx_param, plain_param in zip(amx_net.parameters(), plain_net.parameters(), strict=True):
        assert torch.equal(amx_param, plain_param)


def test_requested_bf16_and_channels_last_apply_on_cpu_too():
    net = tiny_net()
    seen = {}

    def record(module, inputs, output):
        seen["input_channels_last"] = inputs[0].is_contiguous(memory_format=torch.channels_last)
        seen["output_dtype"] = output.dtype

    net[0].register_forward_hook(record)
    run_steps(settings(precision="fp32", memory_format="contiguous"), net)
    assert seen == {"input_channels_last": False, "output_dtype": torch.float32}
    _, stats = run_steps(settings(precision="bf16", memory_format="channels_last"), net)
    assert seen == {"input_channels_last": True, "output_dtype": torch.bfloat16}
    assert all(param.dtype == torch.float32 for param in net.parameters())  # autocast only
    assert math.isfinite(stats["train_loss"])


def test_divergence_stops_before_the_bad_step_on_cpu():
    net = tiny_net()
    before = [p.clone() for p in net.parameters()]
    x, y = batches(1)[0]
    x[0, 0, 0, 0] = float("nan")
    optimizer = make_optimizer(net, 0.1, settings())
    with pytest.raises(PipelineError, match="diverged"):
        train_steps(net, iter([(x, y)]), 1, optimizer, settings())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_divergence_names_the_epoch_and_keeps_the_last_good_checkpoint(tmp_path):
    from pipeline.errors import TrainingDiverged
    from pipeline.train import train
    from tests.conftest import synthetic_data

    data, checkpoint = synthetic_data(), tmp_path / "finetune.pt"
    steps_per_epoch = -(-len(data.train.labels) // 32)
    calls = []

    def nan_in_second_epoch(model):  # a loss term that blows up after the first epoch
        calls.append(1)
        return torch.tensor(float("nan") if len(calls) > steps_per_epoch else 0.0)

    kwargs = dict(epochs=3, lr=0.05, settings=settings(batch_size=32), seed=0, device=CPU)
    with pytest.raises(TrainingDiverged) as caught:
        train(
            tiny_net_for(data),
            data,
            **kwargs,
            regularizer=nan_in_second_epoch,
            checkpoint=checkpoint,
            fingerprint="fp",
            desc="finetune",
        )
    message = str(caught.value)
    assert message.startswith("finetune epoch 2/3: training diverged: the loss became nan")
    assert "at learning rate" in message and "lower the learning rate" in message
    assert f"The checkpoint after epoch 1 is kept ({checkpoint})" in message
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 1 and state["fingerprint"] == "fp"
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def tiny_net_for(data) -> nn.Module:
    torch.manual_seed(0)
    channels = data.train.images.shape[1]
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, len(data.classes)),
    )


def test_stage_processes_skip_the_seconds_long_imports():
    """Every stage is its own process: seeding and the model registry must not import
    torch._inductor / torch._dynamo (via use_deterministic_algorithms) or torchvision."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "import stages.search, stages.finetune, stages.export, stages.evaluate\n"
        "from pipeline.models import available_models\n"
        "from pipeline.train import seed_everything\n"
        "seed_everything(0)\n"
        "assert torch.are_deterministic_algorithms_enabled()\n"
        "assert torch.is_deterministic_algorithms_warn_only_enabled()\n"
        # the NaN fill of every new tensor cost a few % of a CPU training step
        "assert not torch._C._get_deterministic_fill_uninitialized_memory()\n"
        "heavy = [m for m in ('torch._inductor', 'torch._dynamo', 'torchvision', 'matplotlib')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_recalibrated_bn_statistics_are_those_of_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    bn = model[1]
    bn.running_mean.fill_(5.0)  # stale: gathered in another network
    bn.running_var.fill_(9.0)
    batches = [torch.randn(8, 1, 6, 6) for _ in range(3)]
    recalibrate_bn(model, batches)
    with torch.no_grad():
        out = torch.cat([model[0](x) for x in batches])
    torch.testing.assert_close(bn.running_mean, out.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    assert bn.momentum == 0.1 and not model.training


def test_one_loader_factory_for_every_training_split():
    """Training, calibration and JST's per-iteration loaders all come from make_loader:
    batch size and augmentation from train, the order from the seed alone."""
    from tests.conftest import synthetic_data

    data = synthetic_data()
    cfg = settings(batch_size=16, augment={"crop_padding": 2, "hflip": True})
    train_loader = make_loader(data, cfg, 5, "cpu")
    assert train_loader.augment.crop_padding == 2 and train_loader.augment.hflip
    assert train_loader.batch_size == 16 and train_loader.shuffle
    assert train_loader.num_samples == len(data.train.labels)

    plain = make_loader(data, cfg, 5, "cpu", split=data.val, augment=False)
    assert plain.augment is None and plain.num_samples == len(data.val.labels)
    # Switching augmentation off leaves the batch order unchanged.
    augmented = make_loader(data, cfg, 5, "cpu", split=data.val)
    for (_, y1), (_, y2) in zip(plain, augmented, strict=True):
        assert torch.equal(y1, y2)

    batches = calibration_batches(data, cfg, 3, "cpu", 2)
    expected = make_loader(data, cfg, 3 * 7919 + 3, "cpu", augment=False)
    for got, (x, _) in zip(batches, expected, strict=False):
        assert torch.equal(got, x)


def test_the_divergence_bounds_are_the_documented_ones():
    """An epoch diverged when its logits pass SANE_LOGIT_BOUND, or its mean loss rose above
    the run's start and past LOSS_RISE_FACTOR x ln(classes); at either bound it carries on."""
    from pipeline.errors import LOSS_RISE_FACTOR, SANE_LOGIT_BOUND, TrainingDiverged
    from pipeline.train import DivergenceCheck, check_epoch

    bound = LOSS_RISE_FACTOR * math.log(4)
    check_epoch(DivergenceCheck(), bound, 0.1, 10.0, 4, 0.1)
    with pytest.raises(TrainingDiverged, match="rose past") as caught:
        check_epoch(DivergenceCheck("finetune.lr"), bound * 1.001, 0.1, 10.0, 4, 0.1)
    assert "lower the learning rate (finetune.lr) or raise train.batch_size" in str(caught.value)
    high_start = 2 * bound  # a run that started this badly only counts if it rises further
    check_epoch(DivergenceCheck(), high_start, high_start, 10.0, 4, 0.1)
    with pytest.raises(TrainingDiverged, match="rose past"):
        check_epoch(DivergenceCheck(), high_start * 1.001, high_start, 10.0, 4, 0.1)
    later = DivergenceCheck(start_loss=high_start)  # a later epoch: the run's start is kept
    check_epoch(later, high_start, 0.1, 10.0, 4, 0.1)
    check_epoch(DivergenceCheck(), 1.0, 1.0, SANE_LOGIT_BOUND, 4, 0.1)
    with pytest.raises(TrainingDiverged, match="logits reached") as caught:
        check_epoch(DivergenceCheck("search.lr"), 1.0, 1.0, SANE_LOGIT_BOUND * 1.001, 4, 0.1)
    assert "lower the learning rate (search.lr)" in str(caught.value)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_absurd_learning_rate_stops_the_stage_with_one_divergence_message(precision):
    """Logits that explode (a finite loss, so no NaN check sees it) stop training at the
    end of the epoch; the stage prints where, both losses, the learning rate and what to
    lower, in one line without a traceback, as for a NaN loss."""
    from pipeline.errors import SANE_LOGIT_BOUND
    from pipeline.progress import console
    from pipeline.train import train
    from stages.common import run_stage
    from tests.conftest import synthetic_data

    data = synthetic_data()
    cfg = settings(batch_size=32, precision=precision)

    def main() -> None:
        model = tiny_net_for(data)
        kwargs = dict(settings=cfg, seed=0, device=CPU, desc="finetune", lr_name="finetune.lr")
        train(model, data, epochs=3, lr=1e3, **kwargs)

    main.__module__ = "stages.finetune"
    with console.capture() as captured, pytest.raises(SystemExit) as exit_:
        run_stage(main)
    assert exit_.value.code == 1
    output = captured.get()
    assert "Traceback" not in output
    [message] = [line for line in output.splitlines() if line.startswith("error:")]
    assert message.startswith(
        "error: stage finetune: finetune epoch 1/3: training diverged: the logits reached "
    )
    found = re.search(r"reached (\S+) .*mean loss (\S+) this epoch, (\S+) at the start", message)
    logits, now, start = (float(v) for v in found.groups())
    assert logits > SANE_LOGIT_BOUND and now > 100 * start
    assert "at learning rate 1000; lower the learning rate (finetune.lr)" in message
    assert message.endswith("No epoch checkpoint was written yet.")


def test_a_loss_that_climbs_far_above_its_start_stops_naming_both_losses(tmp_path):
    """An epoch whose mean loss rose above the run's first step (kept across epochs and in
    the checkpoint) and past LOSS_RISE_FACTOR x ln(classes) stops, logits sane or not."""
    from pipeline.errors import LOSS_RISE_FACTOR, TrainingDiverged
    from pipeline.train import train
    from tests.conftest import synthetic_data

    data, checkpoint = synthetic_data(), tmp_path / "finetune.pt"
    steps_per_epoch = -(-len(data.train.labels) // 32)
    jump, calls = 2 * LOSS_RISE_FACTOR * math.log(len(data.classes)), []

    def climbing(model):  # a loss term that jumps far up after the first epoch
        calls.append(1)
        return torch.tensor(jump if len(calls) > steps_per_epoch else 0.0)

    with pytest.raises(TrainingDiverged) as caught:
        train(
            tiny_net_for(data),
            data,
            epochs=3,
            lr=0.05,
            settings=settings(batch_size=32),
            seed=0,
            device=CPU,
            regularizer=climbing,
            checkpoint=checkpoint,
            fingerprint="fp",
            desc="finetune",
            lr_name="finetune.lr",
        )
    message = str(caught.value)
    assert message.startswith(
        f"finetune epoch 2/3: training diverged: the loss rose past {LOSS_RISE_FACTOR:g}x chance"
    )
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 1
    assert f"{state['start_loss']:.4g} at the start" in message
    assert "lower the learning rate (finetune.lr)" in message
    assert f"The checkpoint after epoch 1 is kept ({checkpoint})" in message


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_healthy_noisy_training_never_counts_as_diverged(tmp_path, precision):
    """Batches of 8, label smoothing and a high learning rate: noisy, but it learns. Its
    epochs stay below half the loss bound, so no CPU's or GPU's numerics can tip it over."""
    from pipeline.errors import LOSS_RISE_FACTOR
    from pipeline.train import train
    from tests.conftest import synthetic_data

    data, checkpoint = synthetic_data(), tmp_path / "finetune.pt"
    torch.manual_seed(0)
    channels, height, width = data.train.images.shape[1:]
    learner = nn.Sequential(  # no global pooling: it can see which quadrant lights up
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * height * width, len(data.classes)),
    )
    cfg = settings(batch_size=8, label_smoothing=0.2, precision=precision)
    history = train(
        learner,
        data,
        epochs=3,
        lr=0.2,
        settings=cfg,
        seed=0,
        device=CPU,
        checkpoint=checkpoint,
        fingerprint="fp",
        desc="finetune",
    )
    assert history[-1]["val_top1"] > 0.5  # chance is 0.25
    start = torch.load(checkpoint, weights_only=True)["start_loss"]
    assert 0 < start < 2 * math.log(len(data.classes))  # the run's start, as checked
    chance = math.log(len(data.classes))
    assert max(r["train_loss"] for r in history) < LOSS_RISE_FACTOR / 2 * chance


def test_training_without_validation_trains_the_same_weights_and_records_no_val():
    """``validate=False`` (JST's warm-up) skips the per-epoch evaluation and nothing else."""
    from pipeline.train import train
    from tests.conftest import synthetic_data

    data = synthetic_data()
    runs = {}
    for validate in (True, False):
        model = nn.Sequential(
            nn.Conv2d(data.train.images.shape[1], 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4, len(data.classes)),
        )  # fmt: skip
        torch.manual_seed(0)
        model.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
        history = train(
            model, data, epochs=2, lr=0.1, settings=settings(batch_size=8), seed=0,
            device=CPU, validate=validate,
        )  # fmt: skip
        runs[validate] = (history, model.state_dict())
    assert all("val_top1" in r for r in runs[True][0])
    assert not any(k.startswith("val_") for r in runs[False][0] for k in r)
    torch.testing.assert_close(runs[False][1], runs[True][1], rtol=0, atol=0)
