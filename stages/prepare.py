"""Stage 1, prepare: load the data set, split it (seeded, stratified), store the splits."""

from __future__ import annotations

from pipeline.data import describe, load_dataset, save_prepared
from stages.common import (
    METRICS_DIR,
    PREPARED_DIR,
    ROOT,
    log_prepared_dataset,
    run_stage,
    start,
    tracked_stage,
    write_json,
)


def main() -> None:
    cfg = start("prepare")
    d = cfg.data
    root = ROOT / d.root
    # Loading checks every folder and image: a bad data set fails before any run opens.
    data = load_dataset(
        d.dataset,
        root,
        download=d.download,
        image_size=d.image_size,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        seed=cfg.seed,
    )
    inputs = [] if d.dataset == "digits" else [root]  # digits ship inside scikit-learn
    with tracked_stage(cfg, "prepare", inputs) as run:
        stats = describe(data)
        save_prepared(data, PREPARED_DIR)
        write_json(METRICS_DIR / "prepare.json", stats)
        run.log_params({f"data.{k}": v for k, v in d.model_dump().items()})
        run.log_metrics({f"{name}_size": n for name, n in stats["sizes"].items()})
        run.log_dict(stats, "data_stats.json")
        log_prepared_dataset(run, cfg, "prepare")  # hashed as DVC will record it


if __name__ == "__main__":
    run_stage(main)
