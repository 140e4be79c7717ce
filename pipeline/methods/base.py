"""The common interface of search methods, and the steps the baselines share.

A method is a function ``SearchContext -> SearchResult`` registered under a name; adding
one means writing one module with a ``@register_method("name")`` function.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pipeline.config import PipelineConfig
from pipeline.data import PreparedData
from pipeline.errors import ConfigError
from pipeline.hardware import deployment_channel_block
from pipeline.models import create_model
from pipeline.pruning.flops import FlopsModel
from pipeline.pruning.groups import ChannelLayout
from pipeline.pruning.slicing import build_model, slice_weights, spec_for_indices
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
        _METHODS[name] = fn
        return fn

    return decorator


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
    cfg, data = ctx.config, ctx.data
    c, h, _ = data.input_shape
    model = create_model(cfg.model.arch, num_classes=data.num_classes, in_channels=c, input_size=h)
    layout = model.channel_layout()
    flops = FlopsModel(model, layout, data.input_shape)
    spec = ArchSpec(
        cfg.model.arch, tuple(data.input_shape), data.num_classes, layout.dense_widths()
    )
    groups = layout.prunable_groups(cfg.search.prune_residual)
    s = cfg.search
    if s.target_latency is None:
        budget = Budget(flops, s.target_flops)
    else:
        latency = deployment_latency_model(cfg, model, layout, spec, groups)
        budget = Budget(latency, s.target_latency)
    return DenseSetup(model, layout, flops, spec, groups, budget)


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
    )


def compact_from_dense(
    setup: DenseSetup, keep: dict[str, torch.Tensor]
) -> tuple[ArchSpec, nn.Module]:
    """Physically prune the dense model to the kept channel indices."""
    spec = spec_for_indices(setup.spec, keep)
    compact = build_model(spec).to(next(setup.model.parameters()).device)
    slice_weights(setup.model, compact, setup.layout, keep)
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
