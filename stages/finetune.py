"""Stage 3, finetune: train the searched compact model for ``finetune.epochs``."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.artifacts import load_compact, save_compact
from pipeline.data import load_prepared
from pipeline.distributed import is_main
from pipeline.plots import curves_chart
from pipeline.pruning.flops import count_flops, count_params
from pipeline.train import evaluate, resolve_device, seed_everything, train, training_numerics
from stages.common import (
    COMPACT_DIR,
    METRICS_DIR,
    PLOTS_DIR,
    PREPARED_DIR,
    SEARCHED_DIR,
    clear_checkpoints,
    run_stage,
    stage_checkpoints,
    start,
    tracked_stage,
    write_csv,
    write_json,
)


def main() -> None:
    cfg = start("finetune")
    device = resolve_device(cfg.train.device)
    numerics = training_numerics(cfg.train, device)
    with tracked_stage(cfg, "finetune", [PREPARED_DIR, SEARCHED_DIR]) as run:
        run.set_tags({f"train.{k}": v for k, v in numerics.items()})
        data = load_prepared(PREPARED_DIR)
        spec, model = load_compact(SEARCHED_DIR)
        seed_everything(cfg.seed)
        run.log_params({f"finetune.{k}": v for k, v in cfg.finetune.model_dump().items()})
        model.to(device)
        before = evaluate(model, data.val, data, device)["top1"]

        def log(record: dict) -> None:
            run.log_metrics({k: v for k, v in record.items() if k != "epoch"}, record["epoch"])

        history = train(
            model,
            data,
            epochs=cfg.finetune.epochs,
            lr=cfg.finetune.lr,
            settings=cfg.train,
            seed=cfg.seed,
            device=device,
            on_epoch=log,
            checkpoint=stage_checkpoints("finetune", cfg, [PREPARED_DIR, SEARCHED_DIR])
            / "finetune.pt",
            fingerprint=f"finetune:{spec.sha256}:{cfg.model_dump_json()}",
            desc="finetune",
        )
        if not is_main():  # every rank trained; rank 0 evaluates and writes
            return
        after = evaluate(model, data.val, data, device)["top1"]
        save_compact(COMPACT_DIR, spec, model.cpu())
        write_csv(PLOTS_DIR / "finetune_history.csv", history)
        metrics = {
            "arch_sha256": spec.sha256,
            "val_top1_before": before,
            "val_top1": after,
            "epochs": cfg.finetune.epochs,
            "flops": count_flops(model, spec.input_shape),
            "params": count_params(model),
            **numerics,
        }
        write_json(METRICS_DIR / "finetune.json", metrics)
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)})
        run.log_artifact(COMPACT_DIR / "arch.json", "architecture")
        if history:
            with tempfile.TemporaryDirectory() as tmp:
                chart = curves_chart(
                    history,
                    "epoch",
                    ["train_top1", "val_top1"],
                    Path(tmp) / "finetune_curves.png",
                    "fine-tuning",
                )
                run.log_artifact(chart, "plots")
    clear_checkpoints("finetune")


if __name__ == "__main__":
    run_stage(main, data_parallel=True)
