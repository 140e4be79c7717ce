"""Stage 3, finetune: train the searched compact model for ``finetune.epochs``."""

from __future__ import annotations

from pipeline.artifacts import load_compact, save_compact
from pipeline.distributed import is_main
from pipeline.plots import curves_chart
from pipeline.pruning.flops import count_flops, count_params
from pipeline.train import evaluate, train
from stages.common import (
    COMPACT_DIR,
    PLOTS_DIR,
    PREPARED_DIR,
    SEARCHED_DIR,
    display_path,
    done,
    run_stage,
    start,
    write_csv,
    write_metrics,
)
from stages.training import training_stage

COMPARED = ("val_top1_before", "val_top1")  # in metrics/finetune.json; the rest in details/


def main() -> None:
    cfg = start("finetune")
    inputs = [PREPARED_DIR, SEARCHED_DIR]
    with training_stage(cfg, "finetune", inputs, load=lambda: load_compact(SEARCHED_DIR)) as stage:
        run, data, device = stage.run, stage.data, stage.device
        spec, model = stage.loaded
        model.to(device)
        before = evaluate(model, data.val, data, device, workers=cfg.train.workers)["top1"]

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
            checkpoint=stage.checkpoints / "finetune.pt",
            fingerprint=f"finetune:{spec.sha256}:{cfg.model_dump_json()}",
            desc="finetune",
            lr_name="finetune.lr",
        )
        if not is_main():  # every rank trained; rank 0 evaluates and writes
            return
        after = evaluate(model, data.val, data, device, workers=cfg.train.workers)["top1"]
        save_compact(COMPACT_DIR, spec, model.cpu())
        write_csv(PLOTS_DIR / "finetune_history.csv", history)
        record = {
            "arch_sha256": spec.sha256,
            "val_top1_before": before,
            "val_top1": after,
            "epochs": cfg.finetune.epochs,
            "flops": count_flops(model, spec.input_shape),
            "params": count_params(model),
            **stage.numerics,
        }
        write_metrics("finetune", record, COMPARED)
        run.log_metrics({k: v for k, v in record.items() if isinstance(v, int | float)})
        done(
            "finetune",
            f"val top-1 {100 * before:.2f} % → {100 * after:.2f} % in {cfg.finetune.epochs} "
            f"epochs ({record['precision']}); {display_path(COMPACT_DIR)}",
        )
        run.log_artifact(COMPACT_DIR / "arch.json", "architecture")
        if history:
            ys = ["train_top1", "val_top1"]
            stage.log_chart(
                lambda tmp: curves_chart(
                    history, "epoch", ys, tmp / "finetune_curves.png", "fine-tuning"
                )
            )


if __name__ == "__main__":
    run_stage(main, data_parallel=True)
