"""What every stage shares: config, paths, atomic outputs, MLflow wiring, error handling.

Stages run from the repository root (DVC's working directory). Each one validates the
whole params.yaml and checks the tracking store *before* doing any work, so bad input
fails fast and leaves earlier outputs untouched.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.text import Text

from pipeline import distributed
from pipeline.atomic import write_text_atomic
from pipeline.config import PipelineConfig, load_config
from pipeline.errors import ConfigError, PipelineError, TrainingDiverged
from pipeline.progress import console

ROOT = Path.cwd()
PARAMS = ROOT / "params.yaml"
PREPARED_DIR = ROOT / "data" / "prepared"
SEARCHED_DIR = ROOT / "models" / "searched"
COMPACT_DIR = ROOT / "models" / "compact"
ONNX_MODEL = ROOT / "models" / "model.onnx"
DENSE_ONNX = ROOT / "models" / "dense.onnx"
METRICS_DIR = ROOT / "metrics"
DETAILS_DIR = METRICS_DIR / "details"  # every value a stage records; not a DVC metric
PLOTS_DIR = METRICS_DIR / "plots"
CHECKPOINT_DIR = ROOT / "checkpoints"

# What each stage uses the prepared data set for: the context of its MLflow dataset input.
DATASET_CONTEXT = {
    "prepare": "training",
    "search": "training",
    "finetune": "training",
    "export": "testing",  # parity check on test images (and int8 calibration)
    "evaluate": "testing",
}


def stage_checkpoints(stage: str, cfg: PipelineConfig, inputs: list[Path]) -> Path:
    """The folder of ``stage``'s resume checkpoints: checkpoints/<stage>/<key>.

    The key hashes every parameter and the content of the stage's input files, so a
    checkpoint of other parameters or inputs is never resumed from. checkpoints/ is no DVC
    output (DVC never deletes or restores it), so it survives a SIGKILL and the next
    ``dvc repro``; ``clear_checkpoints`` removes it once the stage's outputs are written.
    """
    digest = hashlib.sha256(cfg.model_dump_json().encode())
    for root in inputs:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for file in files:
            digest.update(str(file.relative_to(root.parent)).encode())
            with file.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return CHECKPOINT_DIR / stage / digest.hexdigest()[:16]


def clear_checkpoints(stage: str) -> None:
    """Drop a finished stage's checkpoints (its outputs are written and cached by DVC)."""
    shutil.rmtree(CHECKPOINT_DIR / stage, ignore_errors=True)


def run_stage(main: Callable[[], None], data_parallel: bool = False) -> None:
    """Run a stage's main; user errors print one clear message and exit 1, no traceback.

    A ``data_parallel`` stage may run under ``torchrun`` (``$PIPELINE_NPROC`` > 1 relaunches
    it so): every process runs ``main``; only rank 0 writes outputs and MLflow runs.
    """
    try:
        if data_parallel:
            distributed.relaunch_if_requested(_module_name(main))
            distributed.init_from_env()
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise PipelineError(
                f"{_module_name(main)} runs in one process; launch it without torchrun "
                "(only search and finetune train on several processes)."
            )
        main()
    except PipelineError as err:
        if isinstance(err, TrainingDiverged):  # name the stage: the loop knows only its part
            err = f"stage {_module_name(main).rpartition('.')[2]}: {err}"
        # soft_wrap: not re-wrapped at 80 columns in logs, so the message stays greppable.
        # Text, not markup: the message quotes user input ("[/]" in a key would be markup).
        message = Text.assemble(("error:", "bold red"), " ", str(err))
        console.print(message, highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        sys.exit(130)
    finally:
        distributed.shutdown()


def _module_name(main: Callable[[], None]) -> str:
    """``stages.search`` for a stage started as ``python -m stages.search``."""
    spec = getattr(sys.modules.get(main.__module__), "__spec__", None)
    return spec.name if spec is not None else main.__module__


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_metrics(stage: str, record: dict, compared: tuple[str, ...]) -> dict:
    """Write a stage's results: the few values a person compares across runs (``compared``,
    those the record has) to ``metrics/<stage>.json``, the DVC metric that ``dvc metrics
    show`` and ``dvc exp show`` print, and the whole record to ``metrics/details/<stage>.json``
    (a plain output: counts, per-batch timings, hashes). Returns the compared values."""
    headline = {key: record[key] for key in compared if key in record}
    write_json(DETAILS_DIR / f"{stage}.json", record)
    write_json(METRICS_DIR / f"{stage}.json", headline)
    return headline


def done(stage: str, summary: str) -> None:
    """The line a stage ends with: what it did, in words and the numbers that matter."""
    line = Text.assemble((f"{stage}:", "bold green"), " ", summary)
    console.print(line, highlight=False, soft_wrap=True)


def write_csv(path: Path, rows: list[dict]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def pipeline_key(cfg: PipelineConfig) -> str:
    """One pipeline execution = one set of parameters at one commit."""
    from pipeline.tracking import git_commit

    text = cfg.model_dump_json() + (git_commit(ROOT) or "unknown")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_name(cfg: PipelineConfig) -> str:
    s = cfg.search
    budget = f"{s.target_flops:g}" if s.target_latency is None else f"lat{s.target_latency:g}"
    return f"{cfg.model.arch}-{s.method}-{budget}-{cfg.data.dataset}-seed{cfg.seed}"


def display_path(path: Path) -> Path:
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def pipeline_tracker(cfg: PipelineConfig, provenance: dict | None = None):
    """The MLflow tracker of this pipeline execution (``start`` has checked the store);
    ``provenance`` is the record a new parent run gets (``pipeline.provenance``)."""
    from pipeline import tracking

    return tracking.PipelineTracker(
        tracking.resolve_tracking_uri(ROOT),
        cfg.tracking.experiment,
        pipeline_key(cfg),
        cfg.model_dump(),
        run_name(cfg),
        spool_dir=tracking.spool_directory(ROOT),
        provenance=provenance,
    )


@contextmanager
def tracked_stage(cfg: PipelineConfig, stage: str, inputs: list[Path]) -> Iterator:
    """A nested MLflow run for this stage under the pipeline execution's parent run."""
    from pipeline import provenance, tracking

    if not distributed.is_main():  # rank 0 alone records the run
        yield NoRun()
        return
    # What a rebuild needs (commit, DVC hashes of the deps as they are now, parameters,
    # packages, device); the parent run gets the same record without the stage's deps.
    record = provenance.collect(ROOT, cfg.model_dump(mode="json"), stage)
    parent_record = record | {"stage": None, "dvc": {"stage": None, "deps": {}}}
    tracker = pipeline_tracker(cfg, parent_record)
    tags = provenance.record_tags(record)
    tags |= tracking.input_hash_tags([display_path(p) for p in inputs if p.exists()], ROOT)
    tags["dvc.stage"] = stage
    with tracker.stage_run(stage, tags) as run:
        run.log_dict(record, provenance.RECORD_FILE)
        prepared_key = f"input.{display_path(PREPARED_DIR).as_posix()}"
        if prepared_key in tags:  # the stage reads data/prepared: its dataset input
            log_prepared_dataset(run, cfg, stage, tags[prepared_key])
        yield run


def log_prepared_dataset(run, cfg: PipelineConfig, stage: str, digest: str | None = None) -> None:
    """Log data/prepared as the MLflow dataset of ``run`` and of the pipeline's run: its
    DVC md5 (``digest``, hashed here when None), splits and where it came from."""
    from pipeline import tracking

    digest = digest or tracking.file_md5(PREPARED_DIR, ROOT)
    origin = tracking.dataset_origin(
        cfg.data.dataset, tracking.original_repo_root(ROOT) / cfg.data.root
    )
    dataset = tracking.prepared_dataset(PREPARED_DIR, digest, origin)
    run.log_dataset(dataset, DATASET_CONTEXT[stage])


class NoRun:
    """The MLflow run of a rank other than 0: every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def start(stage: str) -> PipelineConfig:
    """Validate params.yaml and the tracking store: fail in seconds, before any work."""
    from pipeline import tracking

    cfg = load_config(PARAMS)
    resolve_names(cfg)
    check_user_files_are_deps(cfg, stage, ROOT)
    if not distributed.is_main():  # rank 0 checks the store and replays the spool
        return cfg
    uri = tracking.resolve_tracking_uri(ROOT)
    tracking.check_tracking_available(uri)
    # Calls an earlier stage spooled while the store was away: the store answers again.
    replayed, left = tracking.replay_spooled(uri, ROOT)
    if replayed or left:
        console.log(f"replayed {replayed} spooled MLflow call(s); {left} spool file(s) left")
    console.log(f"stage [bold]{stage}[/]: parameters valid")
    return cfg


def resolve_names(cfg: PipelineConfig) -> None:
    """Look up the registry names params.yaml uses, so that a misspelt method or model is
    reported by whichever stage runs first, before any work (the config layer knows no
    registry; each registry words its own error). A model without a hand-written layout
    (torchvision's, the user's) must also classify a zeros batch of the configured shape,
    and ``model.weights`` must be readable; the search stage checks both again on the
    prepared data before training (``pipeline.methods.base.dense_setup``)."""
    from pipeline.methods import get_method
    from pipeline.models import check_model_runs, is_hand_written, model_factory
    from pipeline.models.weights import check_weights_source

    get_method(cfg.search.method)
    model_factory(cfg.model.arch)
    if cfg.model.weights is not None:
        check_weights_source(cfg.model.weights)
    probe = _configured_input(cfg)
    if probe is not None and not is_hand_written(cfg.model.arch):
        check_model_runs(cfg.model.arch, **probe)


MODEL_STAGES = ("search", "finetune", "export", "evaluate")  # stages that build the model


def check_user_files_are_deps(cfg: PipelineConfig, stage: str, repo_root: Path) -> None:
    """Files of the user's that ``stage`` reads must be among its deps in ``dvc.yaml``:
    otherwise DVC does not rerun it when they change, and a colleague's ``dvc repro``
    reports a stale model as up to date. dvc.yaml cannot list them for everyone (a dep must
    exist, and these are optional), so each user adds theirs; this says which, before any
    work. Outside a DVC project there is nothing to check."""
    from pipeline.models.user import factory_module_file, is_user_factory
    from pipeline.models.weights import is_torchvision_weights

    d, arch, weights = cfg.data, cfg.model.arch, cfg.model.weights
    needed: list[tuple[str, Path, str | None]] = []  # (parameter, file, its ${} dep)
    # digits ship inside scikit-learn; downloaded CIFAR archives are checked against their
    # published MD5 sums.
    if stage == "prepare" and d.dataset != "digits" and not d.download:
        needed.append(("data.root", Path(d.root), "${data.root}"))
    if stage == "search" and weights is not None and not is_torchvision_weights(weights):
        needed.append(("model.weights", Path(weights), "${model.weights}"))
    if stage in MODEL_STAGES and is_user_factory(arch):
        module = factory_module_file(arch).resolve()
        needed.append(("model.arch", module, None))
    for parameter, path, template in needed:
        _check_declared(repo_root, stage, parameter, path, template)


def _check_declared(
    repo_root: Path, stage: str, parameter: str, path: Path, template: str | None
) -> None:
    dvc_yaml = repo_root / "dvc.yaml"
    if not dvc_yaml.is_file():
        return
    from pipeline.provenance import declared_deps

    deps = declared_deps(dvc_yaml, stage)
    target = (repo_root / path).resolve()
    declared = [(repo_root / dep).resolve() for dep in deps if "${" not in dep]
    if (template is not None and template in deps) or any(
        target == dep or target.is_relative_to(dep) for dep in declared
    ):
        return
    # ${data.root} follows the parameter; a weights file is named as it is (a ${} dep
    # would break the day model.weights is null again).
    relative = (
        target.relative_to(repo_root.resolve())
        if target.is_relative_to(repo_root.resolve())
        else target
    )
    shown = template if parameter == "data.root" else relative.as_posix()
    raise ConfigError(
        f"{parameter} makes the {stage} stage read {relative}, but it is not "
        f"among the stage's deps in {dvc_yaml.name}, so DVC would not rerun the stage when "
        f"it changes. Add `- {shown}` to stages.{stage}.deps in {dvc_yaml.name} "
        "(see docs/sharing.md)"
    )


# What params.yaml alone says of the prepared data: (channels, native side, classes).
_DATASET_SHAPES = {"digits": (1, 8, 10), "cifar10": (3, 32, 10), "cifar100": (3, 32, 100)}


def _configured_input(cfg: PipelineConfig) -> dict | None:
    """The model's input as configured, or None where only the images tell (imagefolder)."""
    if cfg.data.dataset not in _DATASET_SHAPES:
        return None
    channels, side, classes = _DATASET_SHAPES[cfg.data.dataset]
    size = cfg.data.image_size or side
    return {"num_classes": classes, "in_channels": channels, "input_size": size}
