"""Stage 1, prepare: load the data set, split it (seeded, stratified), store the splits:
in memory when they fit data.max_memory_mb decoded, else as shards that training streams."""

from __future__ import annotations

from pipeline.data import describe, prepare_dataset
from pipeline.progress import count_progress
from stages.common import (
    PREPARED_DIR,
    ROOT,
    done,
    log_prepared_dataset,
    run_stage,
    start,
    tracked_stage,
    write_metrics,
)


def main() -> None:
    cfg = start("prepare")
    d = cfg.data
    root = ROOT / d.root
    # Every folder and image is checked first: a bad data set fails before any run opens,
    # and a sharded write killed half-way resumes from its finished shards.
    with count_progress("prepare: shards written") as shard_done:
        data = prepare_dataset(
            d.dataset,
            root,
            PREPARED_DIR,
            download=d.download,
            image_size=d.image_size,
            crop_ratio=d.crop_ratio,
            max_side=d.max_side,
            max_memory_mb=d.max_memory_mb,
            val_fraction=d.val_fraction,
            test_fraction=d.test_fraction,
            seed=cfg.seed,
            on_shard=shard_done,
        )
    inputs = [] if d.dataset == "digits" else [root]  # digits ship inside scikit-learn
    with tracked_stage(cfg, "prepare", inputs) as run:
        stats = describe(data)
        write_metrics("prepare", stats, ("sizes",))  # class counts and the rest: details
        run.log_params({f"data.{k}": v for k, v in d.model_dump().items()})
        run.log_metrics({f"{name}_size": n for name, n in stats["sizes"].items()})
        run.log_dict(stats, "data_stats.json")
        log_prepared_dataset(run, cfg, "prepare")  # hashed as DVC will record it
    sizes = " / ".join(str(n) for n in stats["sizes"].values())
    form = "shards, streamed in training" if data.streamed else "loaded whole in training"
    done(
        "prepare",
        f"{d.dataset}, {stats['num_classes']} classes, train/val/test {sizes} images of "
        f"{'x'.join(map(str, data.input_shape))} in data/prepared ({form})",
    )


if __name__ == "__main__":
    run_stage(main)
