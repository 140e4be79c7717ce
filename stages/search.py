"""Stage 2, search: find the compact architecture with the configured method."""

from __future__ import annotations

from pipeline.artifacts import save_compact
from pipeline.distributed import is_main
from pipeline.methods import SearchContext, SearchResult, get_method
from pipeline.models.weights import weights_file
from pipeline.plots import curves_chart, kept_widths_chart
from stages.common import (
    PLOTS_DIR,
    PREPARED_DIR,
    ROOT,
    SEARCHED_DIR,
    done,
    run_stage,
    start,
    write_csv,
    write_metrics,
)
from stages.training import TrainingStage, training_stage

# What `dvc metrics show` prints of the search (the rest: metrics/details/search.json):
# the method and numerics that produced the architecture, and what it kept.
COMPARED = ("method", "precision", "flops_ratio", "predicted_latency_ratio", "val_top1")


def main() -> None:
    cfg = start("search")
    method = get_method(cfg.search.method)
    # model.weights is an input: provenance hashes it and checkpoints key on its content.
    weights = [] if cfg.model.weights is None else [ROOT / weights_file(cfg.model.weights)]
    with training_stage(cfg, "search", [PREPARED_DIR, *weights]) as stage:
        run = stage.run
        ctx = SearchContext(cfg, stage.data, stage.device, stage.checkpoints, run.log_metrics)
        result = method(ctx)
        if not is_main():  # every rank computed; rank 0 writes
            return

        save_compact(SEARCHED_DIR, result.spec, result.model)
        history = [{"step": i + 1, **r} for i, r in enumerate(result.history)]
        write_csv(PLOTS_DIR / "search_history.csv", history)
        write_csv(PLOTS_DIR / "kept_widths.csv", width_rows(result))
        record = {
            "method": cfg.search.method,
            "target_flops": cfg.search.target_flops,
            **(
                {}
                if cfg.search.target_latency is None
                else {"target_latency": cfg.search.target_latency}
            ),
            "arch_sha256": result.spec.sha256,
            "round_to": ctx.config.search.round_to,  # auto resolved
            **result.summary,
            **stage.numerics,
        }
        write_metrics("search", record, COMPARED)
        done("search", search_summary(cfg.search.method, result))

        run.log_metrics({k: v for k, v in result.summary.items() if isinstance(v, int | float)})
        run.set_tags({"arch_sha256": result.spec.sha256})
        run.log_artifact(SEARCHED_DIR / "arch.json", "architecture")
        title = (
            f"{cfg.model.arch} / {cfg.search.method}: kept channels per group "
            f"({result.summary['flops_ratio']:.3f} of dense FLOPs)"
        )
        log_charts(stage, result, history, title)


def search_summary(method: str, result: SearchResult) -> str:
    """``jst kept 0.498 of the dense FLOPs (5.05 M of 10.13 M); 13 of 19 channel groups
    narrowed, 664 of 1,344 channels; val top-1 97.40 %``"""
    kept, dense = result.spec.widths, result.dense_spec.widths
    narrowed = sum(kept[group] < dense[group] for group in dense)
    s = result.summary
    words = [
        f"{method} kept {s['flops_ratio']:.3f} of the dense FLOPs "
        f"({s['flops'] / 1e6:.2f} M of {s['dense_flops'] / 1e6:.2f} M)"
    ]
    if "predicted_latency_ratio" in s:
        words.append(f"{s['predicted_latency_ratio']:.3f} of its predicted latency")
    words.append(
        f"{narrowed} of {len(dense)} channel groups narrowed, "
        f"{sum(kept.values()):,} of {sum(dense.values()):,} channels"
    )
    if "val_top1" in s:
        words.append(f"val top-1 {100 * s['val_top1']:.2f} %")
    return "; ".join(words)


def width_rows(result: SearchResult) -> list[dict]:
    dense = result.dense_spec.widths
    return [{"group": g, "kept": result.spec.widths[g], "dense": dense[g]} for g in dense]


def log_charts(stage: TrainingStage, result: SearchResult, history: list[dict], title: str) -> None:
    dense, kept = result.dense_spec.widths, result.spec.widths
    stage.log_chart(lambda tmp: kept_widths_chart(dense, kept, tmp / "kept_widths.png", title))
    if history:
        ys = [k for k in history[-1] if k.endswith(("top1", "flops_ratio"))]
        stage.log_chart(
            lambda tmp: curves_chart(history, "step", ys, tmp / "search_curves.png", "search")
        )


if __name__ == "__main__":
    run_stage(main, data_parallel=True)
