"""One training loop for every method: SGD + cosine schedule, resumable per epoch.

The loop is deliberately plain (in the spirit of torchvision's classification
references): methods customise it through an optional ``regularizer`` (extra loss, e.g.
network slimming's L1 on BN gammas) and an ``on_epoch`` callback (metrics, plots).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.atomic import torch_save_atomic
from pipeline.config import TrainConfig
from pipeline.data import Augment, BatchLoader, PreparedData, Split
from pipeline.errors import PipelineError
from pipeline.progress import console, epoch_progress

EpochCallback = Callable[[dict], None]
Regularizer = Callable[[nn.Module], torch.Tensor]


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError(
            "train.device: 'cuda' was requested but no CUDA GPU is visible; "
            "set train.device: auto (or cpu)."
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Deterministic kernels make a CPU run reproducible bit for bit.
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_loader(data: PreparedData, settings: TrainConfig, seed: int, device) -> BatchLoader:
    """Shuffled, augmented batches of the training split."""
    augment = Augment(settings.augment.crop_padding, settings.augment.hflip)
    return BatchLoader(
        data.train,
        data.mean,
        data.std,
        batch_size=settings.batch_size,
        shuffle=True,
        augment=augment,
        seed=seed,
        device=device,
        drop_last=False,
    )


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, data: PreparedData, device, batch_size=512) -> dict:
    """Mean cross-entropy and top-1 accuracy (a fraction) of ``model`` on ``split``."""
    loader = BatchLoader(
        split, data.mean, data.std, batch_size=batch_size, shuffle=False, device=device
    )
    model.eval()
    loss_sum, correct = 0.0, 0
    for x, y in loader:
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    n = len(split.labels)
    return {"loss": loss_sum / n, "top1": correct / n}


def make_optimizer(model: nn.Module, lr: float, settings: TrainConfig) -> torch.optim.SGD:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() == 1 else decay).append(p)  # no decay on BN and biases
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(
        groups, lr=lr, momentum=settings.momentum, nesterov=settings.momentum > 0
    )


def cosine_lr(optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    )


def train_one_epoch(model, loader, optimizer, scheduler, settings, regularizer=None) -> dict:
    return train_steps(
        model, iter(loader), len(loader), optimizer, settings, scheduler, regularizer
    )


def train_steps(
    model, batches, steps: int, optimizer, settings, scheduler=None, regularizer=None
) -> dict:
    """Run ``steps`` SGD steps on ``batches``; returns mean loss and accuracy."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for _, (x, y) in zip(range(steps), batches, strict=False):
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=settings.label_smoothing)
        if regularizer is not None:
            loss = loss + regularizer(model)
        if not torch.isfinite(loss):
            lr = optimizer.param_groups[0]["lr"]
            raise PipelineError(
                f"training diverged: the loss became {loss.item()} at learning rate {lr:.4g}; "
                "lower the learning rate (search.lr / finetune.lr)."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return {"train_loss": loss_sum / max(1, seen), "train_top1": correct / max(1, seen)}


def endless(loader):
    """Batches across epoch boundaries (each pass reshuffles), for step-based training."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def train(
    model: nn.Module,
    data: PreparedData,
    *,
    epochs: int,
    lr: float,
    settings: TrainConfig,
    seed: int,
    device: torch.device,
    regularizer: Regularizer | None = None,
    on_epoch: EpochCallback | None = None,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    desc: str = "train",
) -> list[dict]:
    """Train ``model`` in place for ``epochs``; returns one record per epoch.

    With ``checkpoint`` set, state is saved after every epoch and a later call with the
    same ``fingerprint`` resumes after the last finished epoch.
    """
    model.to(device)
    loader = make_loader(data, settings, seed, device)
    optimizer = make_optimizer(model, lr, settings)
    scheduler = cosine_lr(optimizer, epochs * len(loader))
    history: list[dict] = []
    start = 0
    state = _load_checkpoint(checkpoint, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        history, start = state["history"], state["epoch"]
        console.log(f"{desc}: resuming after epoch {start}/{epochs} from {checkpoint}")
    with epoch_progress(desc, epochs, start) as advance:
        for epoch in range(start, epochs):
            loader.set_epoch(epoch)
            record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
            record |= train_one_epoch(model, loader, optimizer, scheduler, settings, regularizer)
            record |= {f"val_{k}": v for k, v in evaluate(model, data.val, data, device).items()}
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
            if checkpoint is not None:
                _save_checkpoint(checkpoint, fingerprint, model, optimizer, scheduler, history)
            advance(record)
    return history


def _save_checkpoint(path: Path, fingerprint, model, optimizer, scheduler, history) -> None:
    state = {
        "fingerprint": fingerprint,
        "epoch": len(history),
        "history": history,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
    }
    torch_save_atomic(state, path)


def _load_checkpoint(path: Path | None, fingerprint: str):
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a checkpoint we cannot read is simply not resumed from
        console.log(f"ignoring unreadable checkpoint {path}")
        return None
    return state if state.get("fingerprint") == fingerprint else None
