"""The common interface of search methods, and the steps the baselines share.

A method is a function ``SearchContext -> SearchResult`` registered under a name; adding
one means writing one module in ``pipeline.methods`` with a ``@register_method("name")``
function: the package imports every module it holds (``import_modules``).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pipeline.config import PipelineConfig
from pipeline.data import PreparedData
from pipeline.errors import ConfigError
from pipeline.hardware import deployment_channel_block
from pipeline.pruning.budget import check_anything_prunable, check_feasible
from pipeline.pruning.flops import FlopsModel
from pipeline.pruning.groups import ChannelLayout, KeptChannels
from pipeline.pruning.slicing import (
    DenseModel,
    dense_model,
    slice_weights,
    spec_for_indices,
)
from pipeline.pruning.spec import ArchSpec
from pipeline.train import train

if TYPE_CHECKING:
    from pipeline.latency import LatencyModel

MetricsLogger = Callable[[dict, int], None]


@dataclass
class SearchContext:
    config: PipelineConfig
    data: PreparedData
    device: torch.device
    workdir: Path | None = None  # checkpoints of long phases live here
    log_metrics: MetricsLogger = lambda metrics, step: None  # noqa: E731

    def __post_init__(self) -> None:
        """Methods see ``search.round_to`` as a number: ``auto`` becomes the channel block
        of the hardware the model is deployed to."""
        if self.config.search.round_to == "auto":
            block = deployment_channel_block(self.config.evaluate.device)
            search = self.config.search.model_copy(update={"round_to": block})
            self.config = self.config.model_copy(update={"search": search})


@dataclass
class SearchResult:
    spec: ArchSpec
    model: nn.Module  # the compact model, physically pruned, with its trained weights
    dense_spec: ArchSpec
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


SearchMethod = Callable[[SearchContext], SearchResult]
_METHODS: dict[str, SearchMethod] = {}


def register_method(name: str) -> Callable[[SearchMethod], SearchMethod]:
    def decorator(fn: SearchMethod) -> SearchMethod:
        if name in _METHODS and _METHODS[name] is not fn:
            # As timm does: a second definition replaces the first, which is rarely meant.
            warnings.warn(
                f"method {name!r} registered again; the new function replaces the old",
                stacklevel=2,
            )
        _METHODS[name] = fn
        return fn

    return decorator


def import_modules(path: Iterable[str], package: str) -> list[str]:
    """Import every module below ``path`` (a package's ``__path__``), subpackages too, so
    that each registers its methods; returns their names. Each is imported as it is
    found, so a module that fails to import fails loudly (pkgutil alone would skip it)."""
    names = []
    for module in pkgutil.walk_packages(path, f"{package}."):
        importlib.import_module(module.name)
        names.append(module.name)
    return names


def available_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> SearchMethod:
    if name not in _METHODS:
        choices = ", ".join(available_methods())
        raise ConfigError(f"search.method: unknown method {name!r}; choose one of {choices}.")
    return _METHODS[name]


@dataclass
class Budget:
    """What the compact model must fit: ``cost.ratio(widths) <= target``, with the cost
    model FLOPs (``search.target_flops``) or measured latency (``search.target_latency``)."""

    cost: FlopsModel | LatencyModel
    target: float


@dataclass
class DenseSetup:
    model: nn.Module
    layout: ChannelLayout
    flops: FlopsModel  # what the reports count, whatever the budget
    spec: ArchSpec  # the dense architecture
    groups: list[str]  # the groups the method may prune
    budget: Budget


def dense_setup(ctx: SearchContext) -> DenseSetup:
    """The dense model of ``model.arch`` for the data, freshly initialised or loaded from
    ``model.weights``, with the cost models and the budget the search must meet."""
    from pipeline.models import check_model_runs, is_hand_written
    from pipeline.models.weights import load_weights

    cfg, s = ctx.config, ctx.config.search
    (c, h, w), classes = ctx.data.input_shape, ctx.data.num_classes
    if not is_hand_written(cfg.model.arch):  # before tracing it: a clear error on this data
        check_model_runs(cfg.model.arch, num_classes=classes, in_channels=c, input_size=h)
    dense = dense_model(cfg.model.arch, ctx.data.input_shape, classes)
    if cfg.model.weights is not None:
        what = f"model {cfg.model.arch!r} for {c}x{h}x{w} images and {classes} classes"
        load_weights(dense.model, cfg.model.weights, what)
    setup = flops_setup(dense, s.prune_residual, s.target_flops)
    coupled = [name for name, group in setup.layout.groups.items() if group.coupled]
    residual = [] if s.prune_residual else coupled  # what prune_residual: true would add
    whole = None if is_hand_written(cfg.model.arch) else _left_whole(setup.model, (c, h, w))
    reachable = {"model": cfg.model.arch, "residual_groups": residual, "left_whole": whole}
    if s.target_latency is not None:
        # Before the latency model is measured (minutes): nothing to prune, nothing to time.
        check_anything_prunable(
            setup.groups, s.target_latency, "search.target_latency", **reachable
        )
        latency = deployment_latency_model(cfg, setup.model, setup.layout, setup.spec, setup.groups)
        setup.budget = Budget(latency, s.target_latency)
    # Before any training: a budget no widths can meet is refused now, saying why. Network
    # slimming ranks channels by BN gammas: groups no BN carries stay whole under it.
    prunable = setup.groups
    if s.method == "slimming":
        from pipeline.pruning.importance import unscorable_groups

        left = set(unscorable_groups(setup.layout, setup.groups))
        prunable = [g for g in setup.groups if g not in left]
    check_feasible(
        setup.budget.cost, prunable, setup.budget.target, s.k_min, s.round_to, **reachable
    )
    return setup


def _left_whole(model: nn.Module, input_shape) -> Callable[[], list[str]]:
    """What discovery leaves whole in ``model`` and why ("module: reason"), traced again
    only when a message needs it."""

    def reasons() -> list[str]:
        from pipeline.pruning.discovery import discover

        found = discover(model, input_shape).whole
        return [f"the channels of {module!r} ({reason})" for module, reason in found]

    return reasons


def flops_setup(dense: DenseModel, prune_coupled: bool, target_flops: float) -> DenseSetup:
    """``dense`` with its FLOPs model, under a FLOPs budget of ``target_flops``."""
    flops = FlopsModel(dense.model, dense.layout, dense.spec.input_shape)
    groups = dense.layout.prunable_groups(prune_coupled)
    return DenseSetup(
        dense.model, dense.layout, flops, dense.spec, groups, Budget(flops, target_flops)
    )


def deployment_latency_model(cfg, model, layout, spec: ArchSpec, groups) -> LatencyModel:
    """The latency model of the runtime the evaluate stage deploys to (its provider and
    threads, at ``search.latency_batch``), measured once per machine and cached."""
    from pipeline.evaluate import select_providers
    from pipeline.latency import LatencyModel, NetworkTimer, Runtime, width_choices
    from pipeline.progress import console

    runtime = Runtime(
        provider=select_providers(cfg.evaluate.device)[0],
        threads=cfg.evaluate.threads,
        batch=cfg.search.latency_batch,
    )
    choices = width_choices(spec.widths, groups, cfg.search.k_min, cfg.search.round_to)

    def progress(done: int, total: int) -> None:
        if done == 1 or done == total or done % 25 == 0:
            console.log(f"latency model: timed {done}/{total} layer shapes on {runtime.provider}")

    return LatencyModel(
        model,
        layout,
        spec.input_shape,
        choices,
        runtime,
        latency_cache_dir(),
        NetworkTimer(spec, runtime),
        progress,
    )


def latency_cache_dir() -> Path:
    """Where layer timings are kept between runs: $JST_CACHE_DIR, else ~/.cache/jst-pipeline."""
    return Path(os.environ.get("JST_CACHE_DIR") or Path.home() / ".cache" / "jst-pipeline")


def train_phase(
    ctx: SearchContext, model: nn.Module, name: str, flops_ratio: float, *, regularizer=None
) -> list[dict]:
    """Train for ``search.epochs`` at ``search.lr``, resumable, logging every epoch."""
    cfg = ctx.config

    def log(record: dict) -> None:
        record["flops_ratio"] = flops_ratio  # of the network being trained
        ctx.log_metrics(
            {f"{name}_{k}": v for k, v in record.items() if k != "epoch"}, record["epoch"]
        )

    checkpoint = ctx.workdir / f"{name}.pt" if ctx.workdir else None
    fingerprint = f"{name}:{cfg.model_dump_json()}"
    return train(
        model,
        ctx.data,
        epochs=cfg.search.epochs,
        lr=cfg.search.lr,
        settings=cfg.train,
        seed=cfg.seed,
        device=ctx.device,
        regularizer=regularizer,
        on_epoch=log,
        checkpoint=checkpoint,
        fingerprint=fingerprint,
        desc=name,
        lr_name="search.lr",
    )


def compact_from_dense(setup: DenseSetup, keep: KeptChannels) -> tuple[ArchSpec, nn.Module]:
    """Physically prune the dense model to the kept channel indices."""
    from pipeline.artifacts import build_uninitialised

    spec = spec_for_indices(setup.spec, keep)
    compact = build_uninitialised(spec).to(next(setup.model.parameters()).device)
    slice_weights(setup.model, compact, setup.layout, keep)  # every tensor of its state_dict
    return spec, compact


def budget_summary(setup: DenseSetup, spec: ArchSpec) -> dict:
    summary = {
        "flops_ratio": setup.flops.ratio(spec.widths),
        "flops": setup.flops(spec.widths),
        "dense_flops": setup.flops.dense_flops,
    }
    if setup.budget.cost.name == "latency":
        latency = setup.budget.cost
        summary |= {
            "predicted_latency_ratio": latency.ratio(spec.widths),
            "predicted_latency_ms": latency(spec.widths),
            "dense_latency_ms": latency.dense_ms,
        }
    return summary
