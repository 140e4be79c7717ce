"""The JST search: budget, updater, residual coupling, determinism, resume after SIGKILL."""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook

from pipeline.data import normalize
from pipeline.methods import SearchContext, get_method
from pipeline.methods.jst.search import JointSearch, gates_of
from pipeline.pruning.flops import count_flops
from pipeline.pruning.gates import gated
from pipeline.pruning.slicing import build_model
from pipeline.train import recalibrate_bn, seed_everything
from tests.conftest import synthetic_data, tiny_config
from tests.methods.jst.run_tiny_jst import TINY_JST, tiny_jst_config

HERE = Path(__file__).parent


def _search(**jst):
    seed_everything(0)
    ctx = SearchContext(tiny_jst_config(**jst), synthetic_data(), torch.device("cpu"))
    return JointSearch(ctx)


def test_result_meets_budget_and_logs_every_iteration():
    data = synthetic_data()
    seed_everything(0)
    logged = []
    ctx = SearchContext(
        tiny_jst_config(),
        data,
        torch.device("cpu"),
        log_metrics=lambda m, step: logged.append(step),
    )
    result = get_method("jst")(ctx)
    ratio = count_flops(result.model, data.input_shape) / count_flops(
        build_model(result.dense_spec), data.input_shape
    )
    assert 0.49 <= ratio <= 0.5
    assert [h["iteration"] for h in result.history] == list(range(1, 7))
    assert logged == list(range(1, 7))
    assert result.history[0]["budget"] > result.history[-1]["budget"] == pytest.approx(0.5)
    assert {"flops_ratio", "reward", "budget", "sigma", "policy_entropy"} <= set(result.history[0])
    # val_top1 and best_val_top1 have values from the first iteration that met the budget
    # on: none before (validation decides nothing there, and a chart would read a 0 as
    # zero accuracy); every iteration after is validated.
    first_met = next(i for i, h in enumerate(result.history) if h["meets_budget"])
    assert first_met > 0
    assert all("val_top1" not in h and "best_val_top1" not in h for h in result.history[:first_met])
    assert all("val_top1" in h for h in result.history[first_met:])
    best = [h["best_val_top1"] for h in result.history[first_met:]]
    assert best == sorted(best) and best[0] == result.history[first_met]["val_top1"]


def test_updater_writes_kept_indices_and_leaves_dropped_untouched():
    search = _search()
    candidate = search._draw(search._states(), 0.5, 1.0, 0.05)
    before = {k: v.clone() for k, v in search.setup.model.state_dict().items()}
    alpha_before = {g: a.clone() for g, a in search.alpha.items()}
    sub = search._sub_network(candidate.keep)
    for p in sub.parameters():
        p.data.fill_(3.0)
    sub_alpha = {
        g: torch.full((len(k),), -0.5) for g, k in candidate.keep.items() if g in search.groups
    }
    search._update_target(sub, sub_alpha, candidate.keep)
    after = search.setup.model.state_dict()
    kept = candidate.keep["stem"]
    dropped = torch.ones(after["conv1.weight"].shape[0], dtype=torch.bool)
    dropped[kept] = False
    assert torch.all(after["conv1.weight"][kept] == 3.0)
    assert torch.equal(after["conv1.weight"][dropped], before["conv1.weight"][dropped])
    assert torch.all(after["bn1.weight"][kept] == 3.0)
    for g in search.groups:
        keep = candidate.keep[g]
        assert torch.all(search.alpha[g][keep] == -0.5)
        mask = torch.ones(len(search.alpha[g]), dtype=torch.bool)
        mask[keep] = False
        assert torch.equal(search.alpha[g][mask], alpha_before[g][mask])


@pytest.mark.parametrize("arch", ["resnet20", "resnet18"])
def test_sampled_residual_networks_stay_aligned(arch):
    """Coupled groups have one width, so every sampled sub-network's additions line up."""
    seed_everything(0)
    cfg = tiny_jst_config()
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"arch": arch})})
    data = synthetic_data(size=32 if arch == "resnet18" else 8)
    search = JointSearch(SearchContext(cfg, data, torch.device("cpu")))
    x = torch.randn(2, *data.input_shape)
    for budget in (0.9, 0.5, 0.3):
        candidate = search._draw(search._states(), budget, 2.0, 0.1)
        sub = search._sub_network(candidate.keep).eval()
        gates = {g: gates_of(search.alpha[g][candidate.keep[g]]) for g in search.groups}
        with torch.no_grad(), gated(sub, search.setup.layout, gates):
            assert sub(x).shape == (2, data.num_classes)
        for name, group in search.setup.layout.groups.items():
            modules = dict(sub.named_modules())
            assert {modules[bn].num_features for bn in group.bns} == {candidate.widths[name]}


def test_folded_result_equals_gated_sub_network():
    search = _search(iterations=2, freeze_fraction=0.0)  # the result is the best snapshot
    result = search.run()
    best = search.best
    sub = search._sub_network(best["keep"])
    sub.load_state_dict(best["weights"])
    gates = {g: gates_of(a) for g, a in best["alpha"].items()}
    x = torch.randn(4, 1, 8, 8)
    sub.eval(), result.model.eval()
    with torch.no_grad(), gated(sub, search.setup.layout, gates):
        expected = sub(x)
    torch.testing.assert_close(result.model(x), expected, rtol=1e-5, atol=1e-5)


def test_deterministic_for_a_seed():
    a, b = _search().run(), _search().run()
    assert a.spec.sha256 == b.spec.sha256
    assert [h.get("val_top1") for h in a.history] == [h.get("val_top1") for h in b.history]


def test_alike_draws_are_drawn_once_unscored_and_change_nothing(monkeypatch):
    """Without noise and policy every draw is the same sub-network: scoring one and then
    training it gives what scoring N copies gave (noise switched on at sigma 0 takes the
    scoring path)."""
    scored = []
    monkeypatch.setattr(JointSearch, "_score", _counting(JointSearch._score, scored))
    alike = dict(thresholding=False, freeze_fraction=0.0, candidates=3)
    once = _search(**alike).run()
    assert scored == []  # nothing scored
    scoring = _search(**alike, perturbation=True, sigma_start=0.0, sigma_min=0.0).run()
    assert len(scored) == len(scoring.history)  # every iteration scored its candidates
    assert [h["arch_sha256"] for h in once.history] == [h["arch_sha256"] for h in scoring.history]
    assert all("reward" not in h for h in once.history)
    for (name, a), b in zip(
        once.model.state_dict().items(), scoring.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def _counting(method, calls: list):
    def wrapper(self, *args, **kwargs):
        calls.append(1)
        return method(self, *args, **kwargs)

    return wrapper


def _run(workdir: Path, result: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HERE / "run_tiny_jst.py"), str(workdir), str(result)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_resume_after_sigkill_gives_the_uninterrupted_architecture(tmp_path):
    reference = tmp_path / "reference.json"
    assert _run(tmp_path / "ref", reference).wait(timeout=300) == 0

    workdir, resumed = tmp_path / "killed", tmp_path / "resumed.json"
    process = _run(workdir, resumed)
    deadline = time.time() + 240
    for line in process.stdout:  # kill once the third iteration has been checkpointed
        if "jst search 3/6" in line or time.time() > deadline:
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not resumed.exists()
    state = torch.load(workdir / "jst.pt", weights_only=True)
    assert 3 <= state["next_iteration"] - 1 < 6

    finish = _run(workdir, resumed)
    output = finish.communicate(timeout=300)[0]
    assert finish.returncode == 0, output
    assert "resuming at iteration" in output
    a, b = json.loads(reference.read_text()), json.loads(resumed.read_text())
    assert a["arch_sha256"] == b["arch_sha256"]
    assert a["weights_checksum"] == pytest.approx(b["weights_checksum"], rel=1e-6)
    assert [h.get("val_top1") for h in a["history"]] == [h.get("val_top1") for h in b["history"]]


def test_checkpoint_of_other_parameters_is_not_reused(tmp_path):
    seed_everything(0)
    ctx = SearchContext(
        tiny_jst_config(iterations=2), synthetic_data(), torch.device("cpu"), tmp_path
    )
    JointSearch(ctx).run()
    other = SearchContext(
        tiny_jst_config(iterations=3), synthetic_data(), torch.device("cpu"), tmp_path
    )
    search = JointSearch(other)
    search._resume()
    assert search.next_iteration == 1


def test_divergence_names_the_iteration_and_keeps_the_last_checkpoint(tmp_path):
    from pipeline.errors import TrainingDiverged

    seed_everything(0)
    ctx = SearchContext(
        tiny_jst_config(iterations=3), synthetic_data(), torch.device("cpu"), tmp_path
    )
    search = JointSearch(ctx)
    # A learning rate far too high from iteration 3 on: the weights blow up and the loss
    # becomes inf/NaN a step later.
    search.schedule = TooHotFrom(3, search.schedule)
    with pytest.raises(TrainingDiverged) as caught:
        search.run()
    message = str(caught.value)
    assert message.startswith("jst search iteration 3/3: training diverged: the loss became")
    assert "at learning rate 1e+30" in message
    assert f"The checkpoint after iteration 2 is kept ({tmp_path / 'jst.pt'})" in message
    state = torch.load(tmp_path / "jst.pt", weights_only=True)
    assert state["next_iteration"] == 3 and len(state["history"]) == 2


class TooHotFrom:
    """A JST schedule whose learning rate is absurd from iteration ``t0`` on."""

    def __init__(self, t0, schedule):
        self.t0, self.schedule = t0, schedule

    def __getattr__(self, name):
        return getattr(self.schedule, name)

    def learning_rate(self, t):
        return 1e30 if t >= self.t0 else self.schedule.learning_rate(t)


def test_bn_statistics_of_a_trained_sub_network_are_its_own():
    """Inherited statistics (gathered in other sub-networks, partly kept through a few
    steps at momentum 0.1) made validation accuracy 0.29-0.81 instead of 0.87-0.95."""
    seed_everything(0)
    data = synthetic_data()
    cfg = tiny_config(
        train={"batch_size": len(data.train.labels)},  # one batch: the whole training set
        search={"method": "jst", "target_flops": 0.5, "epochs": 7, "jst": TINY_JST},
        model={"arch": "resnet20"},
    )
    search = JointSearch(SearchContext(cfg, data, torch.device("cpu")))
    search.run()
    best = search.best
    sub = search._sub_network(best["keep"])
    sub.load_state_dict(best["weights"])
    expected = copy.deepcopy(sub)
    x = normalize(data.train.images, data.mean, data.std)
    gates = {g: gates_of(a) for g, a in best["alpha"].items()}
    with gated(expected, search.setup.layout, gates):
        recalibrate_bn(expected, [x])
    want = expected.state_dict()
    for key, value in sub.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(value, want[key], rtol=1e-4, atol=1e-5)


def test_alpha_stays_bounded_and_gates_learn_over_a_long_search():
    """Unbounded, Adam drove alpha to 15: gates saturated, softmax(alpha) on one filter."""
    search = _search(iterations=6, alpha_lr=1.0, alpha_max=2.0)
    result = search.run()
    biggest = max(float(a.abs().max()) for a in search.alpha.values())
    assert 0.5 < biggest <= 2.0
    assert all(h["alpha_abs_max"] <= 2.0 for h in result.history)


def test_gates_learn_on_training_images_and_candidates_score_on_validation():
    """Alpha fitted and candidates scored on one split picked a candidate that scored
    1.000 there and 0.95 on validation. Every gradient step (weights and gates) must see
    training images only, every evaluation (candidate scores, validation accuracy)
    validation images only."""
    seed_everything(0)
    data = synthetic_data()
    cfg = tiny_config(
        train={"augment": {"crop_padding": 0}},  # images reach the network as stored
        search={
            "method": "jst",
            "target_flops": 0.5,
            "epochs": 3,
            "jst": {**TINY_JST, "iterations": 2, "freeze_fraction": 0.0},
        },
        model={"arch": "resnet20"},
    )
    search = JointSearch(SearchContext(cfg, data, torch.device("cpu")))
    passes = []  # (gradient on, network in training mode, images) of every forward pass

    def record(module, args):
        if isinstance(module, nn.Conv2d) and args[0].shape[1:] == data.input_shape:
            passes.append((torch.is_grad_enabled(), module.training, args[0].detach().clone()))

    handle = register_module_forward_pre_hook(record)
    try:
        search.run()
    finally:
        handle.remove()

    split_of = _split_finder(data)
    seen = {}
    for gradient, training, images in passes:
        kind = "gradient step" if gradient else "BN re-estimation" if training else "evaluation"
        seen.setdefault(kind, set()).add(split_of(images))
    assert seen == {
        "gradient step": {"train"},
        "BN re-estimation": {"train"},
        "evaluation": {"val"},
    }
    assert any(float(a.abs().max()) > 0 for a in search.alpha.values())  # the gates learned


def _split_finder(data):
    """A function naming the split ("train", "val" or "mixed") a batch of normalised
    images was drawn from."""
    flat = {
        name: normalize(split.images, data.mean, data.std).flatten(1)
        for name, split in (("train", data.train), ("val", data.val))
    }
    assert (_distance_to_nearest(flat["val"], flat["train"]) > 1e-2).all()  # disjoint

    def split_of(images: torch.Tensor) -> str:
        for name, pool in flat.items():
            if (_distance_to_nearest(images.flatten(1).float(), pool) < 1e-4).all():
                return name
        return "mixed"

    return split_of


def _distance_to_nearest(rows: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Largest pixel difference of each row to its nearest row of ``pool`` (exact, unlike
    cdist's matrix-product shortcut)."""
    return (rows[:, None] - pool[None]).abs().amax(-1).min(1).values


def _statistics_used(network: nn.Module) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Filled, per BN of ``network``, with the running statistics each forward pass in
    eval mode normalises with."""
    used: dict[str, list] = {}

    def record(name, bn, _inputs):
        if not bn.training:
            used.setdefault(name, []).append((bn.running_mean.clone(), bn.running_var.clone()))

    for name, module in network.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_pre_hook(partial(record, name))
    return used


def test_candidates_are_scored_with_bn_statistics_of_their_own(monkeypatch):
    """A gathered candidate inherits statistics of other sub-networks; the statistics it
    is scored with are re-estimated for it, its gates applied, on training images."""
    search = _search()
    generator = torch.Generator().manual_seed(0)
    for g in search.groups:  # gates that differ from 1: the statistics depend on them
        search.alpha[g] = torch.randn(len(search.alpha[g]), generator=generator)
    images = normalize(search.data.train.images, search.data.mean, search.data.std)
    calibration = [images[:48], images[48:]]
    candidates = [search._draw(search._states(), 0.5, 1.0, 0.05) for _ in range(3)]
    build, used = search._sub_network, []
    monkeypatch.setattr(search, "_sub_network", lambda keep: _recorded(build(keep), used))

    search._score(candidates, 1, 0.5, calibration)

    for candidate, statistics in zip(candidates, used, strict=True):
        own = build(candidate.keep)
        gates = {g: gates_of(search.alpha[g][candidate.keep[g]]) for g in search.groups}
        with gated(own, search.setup.layout, gates):
            recalibrate_bn(own, calibration)
        bns = {n: m for n, m in own.named_modules() if isinstance(m, nn.BatchNorm2d)}
        assert statistics.keys() == bns.keys()  # every BN normalised with running statistics
        for name, bn in bns.items():
            for mean, var in statistics[name]:
                torch.testing.assert_close(mean, bn.running_mean, rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(var, bn.running_var, rtol=1e-4, atol=1e-5)


def _recorded(network: nn.Module, used: list) -> nn.Module:
    used.append(_statistics_used(network))
    return network


def test_learning_rate_the_optimizer_sees_never_rises_from_warmup_to_the_end():
    """The warm-up's cosine fell to ~0 and the first iteration restarted at search.lr.
    One curve: from search.lr down to search.lr * lr_decay, never up, never below."""
    rates = []

    def record(optimizer, _args, _kwargs):
        if isinstance(optimizer, torch.optim.SGD):  # the weights' (gates and policy: Adam)
            rates.append(optimizer.param_groups[0]["lr"])

    handle = register_optimizer_step_pre_hook(record)
    try:
        search = _search(warmup_epochs=1.5)  # a whole and a fractional warm-up epoch
        search.run()
    finally:
        handle.remove()
    lr, lowest = search.search_cfg.lr, search.search_cfg.lr * search.jst.lr_decay
    warmup_steps = 5  # 96 training images, batches of 32: 3 + 2 steps
    assert len(rates) > warmup_steps
    assert rates[0] == pytest.approx(lr)
    rises = [(i, a, b) for i, (a, b) in enumerate(pairwise(rates)) if b > a * (1 + 1e-9)]
    assert not rises, f"the learning rate rose at steps {rises}"
    assert min(rates) >= lowest * (1 - 1e-9)


def test_frozen_iterations_train_one_architecture_and_ship_it(monkeypatch):
    search = _search(iterations=4, freeze_fraction=0.5)
    scored_at = []
    score = search._score
    monkeypatch.setattr(search, "_score", lambda c, t, *a: scored_at.append(t) or score(c, t, *a))
    result = search.run()
    assert scored_at == [1, 2]  # nothing to choose between once frozen: no scoring cost
    assert all("reward" in h for h in result.history[:2])
    assert not any("reward" in h for h in result.history[2:])
    frozen = [h for h in result.history if h["frozen"]]
    assert [h["iteration"] for h in frozen] == [3, 4]
    assert {h["arch_sha256"] for h in frozen} == {result.spec.sha256}
    assert all(h["budget"] == pytest.approx(0.5) for h in frozen)
    assert result.summary["best_iteration"] == 4
    assert search.frozen_optimizer is not None  # momenta carried across iterations
