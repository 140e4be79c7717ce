"""Stage 1, prepare: load the data set, split it (seeded, stratified), store the splits."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.data import describe, load_dataset, save_prepared
from pipeline.errors import ConfigError
from pipeline.provenance import declared_deps
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
    check_raw_data_is_a_dep(cfg, ROOT)
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


RAW_DATA_DEP = "${data.root}"


def check_raw_data_is_a_dep(cfg: PipelineConfig, repo_root: Path) -> None:
    """Files read from ``data.root`` must be a dep of prepare in ``dvc.yaml``: otherwise DVC
    does not rerun the pipeline when they change (``dvc add`` or not), and a colleague's
    ``dvc repro`` reports a stale model as up to date.

    digits ship inside scikit-learn, and downloaded CIFAR archives are checked against their
    published MD5 sums, so neither needs it. Outside a DVC project there is nothing to check.
    """
    d = cfg.data
    dvc_yaml = repo_root / "dvc.yaml"
    if d.dataset == "digits" or d.download or not dvc_yaml.is_file():
        return
    root = (repo_root / d.root).resolve()
    deps = declared_deps(dvc_yaml, "prepare")
    if RAW_DATA_DEP in deps or any((repo_root / dep).resolve() == root for dep in deps):
        return
    raise ConfigError(
        f"data.dataset {d.dataset!r} reads its files from data.root ({d.root}), but the "
        f"prepare stage in {dvc_yaml.name} does not depend on it, so DVC would not rerun the "
        f"pipeline when they change. Add `- {RAW_DATA_DEP}` to stages.prepare.deps in "
        f"{dvc_yaml.name} (see docs/sharing.md)"
    )


if __name__ == "__main__":
    run_stage(main)
