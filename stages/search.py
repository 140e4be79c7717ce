"""Stage 2, search: find the compact architecture with the configured method."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.artifacts import save_compact
from pipeline.data import load_prepared
from pipeline.distributed import is_main
from pipeline.methods import SearchContext, SearchResult, get_method
from pipeline.plots import curves_chart, kept_widths_chart
from pipeline.train import resolve_device, seed_everything, training_numerics
from stages.common import (
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
    cfg = start("search")
    method = get_method(cfg.search.method)
    device = resolve_device(cfg.train.device)
    numerics = training_numerics(cfg.train, device)
    with tracked_stage(cfg, "search", [PREPARED_DIR]) as run:
        run.set_tags({f"train.{k}": v for k, v in numerics.items()})
        data = load_prepared(PREPARED_DIR)
        seed_everything(cfg.seed)
        run.log_params({f"search.{k}": v for k, v in cfg.search.model_dump().items()})
        workdir = stage_checkpoints("search", cfg, [PREPARED_DIR])
        ctx = SearchContext(cfg, data, device, workdir, run.log_metrics)
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
            **numerics,
        }
        write_json(METRICS_DIR / "search.json", metrics)

        run.log_metrics({k: v for k, v in result.summary.items() if isinstance(v, int | float)})
        run.set_tags({"jst.arch_sha256": result.spec.sha256})
        run.log_artifact(SEARCHED_DIR / "arch.json", "architecture")
        title = (
            f"{cfg.model.arch} / {cfg.search.method}: kept channels per group "
            f"({result.summary['flops_ratio']:.3f} of dense FLOPs)"
        )
        log_charts(run, result, history, title)
    clear_checkpoints("search")


def width_rows(result: SearchResult) -> list[dict]:
    dense = result.dense_spec.widths
    return [{"group": g, "kept": result.spec.widths[g], "dense": dense[g]} for g in dense]


def log_charts(run, result: SearchResult, history: list[dict], title: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run.log_artifact(
            kept_widths_chart(
                result.dense_spec.widths, result.spec.widths, tmp / "kept_widths.png", title
            ),
            "plots",
        )
        if history:
            ys = [k for k in history[-1] if k.endswith(("top1", "flops_ratio"))]
            run.log_artifact(
                curves_chart(history, "step", ys, tmp / "search_curves.png", "search"), "plots"
            )


if __name__ == "__main__":
    run_stage(main, data_parallel=True)
