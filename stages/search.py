"""Stage 2, search: find the compact architecture with the configured method."""

from __future__ import annotations

from pipeline.artifacts import save_compact
from pipeline.distributed import is_main
from pipeline.methods import SearchContext, SearchResult, get_method
from pipeline.models.weights import weights_file
from pipeline.plots import curves_chart, kept_widths_chart
from stages.common import (
    METRICS_DIR,
    PLOTS_DIR,
    PREPARED_DIR,
    ROOT,
    SEARCHED_DIR,
    run_stage,
    start,
    write_csv,
    write_json,
)
from stages.training import TrainingStage, training_stage


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
        metrics = {
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
        write_json(METRICS_DIR / "search.json", metrics)

        run.log_metrics({k: v for k, v in result.summary.items() if isinstance(v, int | float)})
        run.set_tags({"arch_sha256": result.spec.sha256})
        run.log_artifact(SEARCHED_DIR / "arch.json", "architecture")
        title = (
            f"{cfg.model.arch} / {cfg.search.method}: kept channels per group "
            f"({result.summary['flops_ratio']:.3f} of dense FLOPs)"
        )
        log_charts(stage, result, history, title)


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
