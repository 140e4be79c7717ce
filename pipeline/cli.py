"""The ``jst`` command line: run pipeline stages, inspect models, validate parameters."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.reproduce import DEFAULT_TOLERANCE as REPRODUCE_TOLERANCE

app = typer.Typer(
    help="jst-pipeline: joint search-and-training pruning, shipped as ONNX.",
    no_args_is_help=True,
    add_completion=False,
)

STAGES = ("prepare", "search", "finetune", "export", "evaluate")


def _run(stage: str) -> None:
    from stages.common import run_stage

    run_stage(importlib.import_module(f"stages.{stage}").main)


@app.command()
def prepare() -> None:
    """Load the data set and write seeded, stratified train/val/test splits."""
    _run("prepare")


@app.command()
def search() -> None:
    """Search the compact architecture with search.method (within search.target_flops)."""
    _run("search")


@app.command()
def finetune() -> None:
    """Fine-tune the searched compact model."""
    _run("finetune")


@app.command("export")
def export_() -> None:
    """Export the compact model (and the dense reference) to ONNX, with a parity check."""
    _run("export")


@app.command()
def evaluate() -> None:
    """Accuracy and latency with ONNX Runtime; registers the model in MLflow."""
    _run("evaluate")


@app.command()
def validate(
    params: Annotated[Path, typer.Option(help="Parameters file.")] = Path("params.yaml"),
) -> None:
    """Check a parameters file and print the resolved configuration."""
    from pipeline.config import load_config
    from pipeline.errors import PipelineError

    try:
        cfg = load_config(params)
    except PipelineError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(cfg.model_dump(), indent=2))


@app.command()
def models(
    all_torchvision: Annotated[
        bool,
        typer.Option("--all", help="Also list torchvision CNNs not verified with discovery."),
    ] = False,
    coverage: Annotated[
        bool,
        typer.Option(
            "--coverage",
            help="Show the share of each listed verified model's conv channels that prunes "
            "(builds and traces every model: seconds each).",
        ),
    ] = False,
) -> None:
    """List the model architectures model.arch accepts, how each one's channel layout is
    known (hand-written, or discovered by tracing the model) and, with --coverage, what
    pruning reaches."""
    from pipeline.models.registry import KIND_UNVERIFIED, model_catalogue
    from pipeline.pruning.coverage import catalogue_lines

    rows = model_catalogue(every_torchvision=all_torchvision)
    verified = {name for name, kind in rows if kind != KIND_UNVERIFIED} if coverage else set()
    typer.echo("\n".join(catalogue_lines(rows, verified)))
    typer.echo(
        "\nor your own model: model.arch: 'package.module:factory', a function in the "
        "repository (docs/pipeline.md, Models)"
    )


@app.command()
def experiments(
    all_commits: Annotated[
        bool, typer.Option("--all-commits", "-A", help="Experiments of every commit.")
    ] = False,
) -> None:
    """The experiments at a glance: method, budget, test top-1, kept FLOPs, latency speed-up
    and parameters, one row each (from `dvc exp show`; its full table has every value)."""
    from pipeline.errors import PipelineError
    from pipeline.experiments import experiment_rows, experiments_table, read_experiments

    try:
        rows = experiment_rows(read_experiments(Path.cwd(), all_commits))
    except PipelineError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo("\n".join(experiments_table(rows)))


@app.command()
def methods() -> None:
    """List the search methods."""
    from pipeline.methods import available_methods

    typer.echo("\n".join(available_methods()))


@app.command()
def inspect(
    model_dir: Annotated[
        Path, typer.Argument(help="Folder with arch.json + weights.safetensors.")
    ] = Path("models/compact"),
) -> None:
    """Rebuild a compact model from its spec and weights; print widths, FLOPs, parameters."""
    from pipeline.artifacts import load_compact
    from pipeline.errors import PipelineError
    from pipeline.pruning.flops import count_flops, count_params
    from pipeline.pruning.slicing import build_model, dense_spec

    try:
        spec, model = load_compact(model_dir)
    except PipelineError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    dense = dense_spec(spec.model, spec.input_shape, spec.num_classes)
    dense_flops = count_flops(build_model(dense), spec.input_shape)
    flops = count_flops(model, spec.input_shape)
    typer.echo(f"model {spec.model}  input {list(spec.input_shape)}  classes {spec.num_classes}")
    typer.echo(f"sha256 {spec.sha256}")
    typer.echo(
        f"FLOPs {flops / 1e6:.2f} M ({flops / dense_flops:.3f} of dense)  "
        f"params {count_params(model) / 1e6:.3f} M"
    )
    for group, width in spec.widths.items():
        typer.echo(f"  {group:<28} {width:>5} / {dense.widths[group]}")


@app.command()
def predict(
    images: Annotated[
        list[Path], typer.Argument(help="Image files (PNG/JPEG) or folders of them.")
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help="A .onnx file, models:/<name>@<alias> or models:/<name>/<version> "
            "(default: the export stage's models/model.onnx)."
        ),
    ] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Classes shown per image.")] = 3,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON list: classes, probabilities, logits.")
    ] = False,
) -> None:
    """Classify images with the exported model: the top classes with softmax probabilities.
    Unreadable files are reported and skipped; the exit status is then 1."""
    from pipeline.errors import PipelineError
    from pipeline.predict import image_files, load_classifier
    from stages.common import ONNX_MODEL

    unreadable: list[Path] = []

    def skip(path: Path, error: PipelineError) -> None:
        unreadable.append(path)
        typer.echo(f"skipped: {error}", err=True)

    try:
        files = image_files(images)
        classifier = load_classifier(model or ONNX_MODEL, Path.cwd())
        predictions = list(classifier.predict(files, top_k, on_unreadable=skip))
    except PipelineError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps([p.as_dict() for p in predictions], indent=2))
    else:
        for p in predictions:
            typer.echo(f"{p.image}  " + ", ".join(f"{name} {prob:.4f}" for name, prob in p.top))
    if unreadable:
        typer.echo(
            f"error: {len(unreadable)} of {len(files)} images could not be read (skipped "
            f"above); {len(predictions)} classified",
            err=True,
        )
        raise typer.Exit(1)


@app.command()
def reproduce(
    model: Annotated[
        str | None,
        typer.Option(help="Registered model name (default: --params' tracking.registered_model)."),
    ] = None,
    version: Annotated[str, typer.Option(help="Registered model version.")] = "1",
    params: Annotated[Path, typer.Option(help="Parameters file naming the model.")] = Path(
        "params.yaml"
    ),
    workdir: Annotated[
        Path | None,
        typer.Option(help="Empty or new folder for the rebuild (default: a new temporary one)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the records and the commands only.")
    ] = False,
    tolerance: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Largest absolute difference accepted in accuracy metrics (top1, top5, "
            "fp32_top1; fractions, 0.01 = 1 percentage point). The architecture hash, FLOPs "
            "and parameter counts must always be equal; 0 demands every metric bit for bit.",
        ),
    ] = REPRODUCE_TOLERANCE,
) -> None:
    """Rebuild a registered model version from its run's records (git clone at the recorded
    commit, recorded params.yaml, dvc repro) and compare architecture hash and metrics.
    Exit status 0 when reproduced (bit for bit, or accuracies within --tolerance), 1 if not."""
    import tempfile

    from pipeline import reproduce as rebuild
    from pipeline import tracking
    from pipeline.errors import PipelineError

    root = tracking.original_repo_root(Path.cwd().resolve())
    uri = tracking.resolve_tracking_uri(root)
    try:
        model = model or _registered_model_name(params)
        tracking.check_tracking_available(uri)
        recorded = tracking.recorded_model_version(uri, model, version)
        commit = rebuild.commit_to_rebuild(recorded)
        prefix = rebuild.default_workdir_name(recorded.version)
        if workdir is None and not dry_run:
            workdir = Path(tempfile.mkdtemp(prefix=prefix))
        # A dry run creates nothing: it names the kind of folder a rebuild would create.
        target = (workdir or Path(tempfile.gettempdir()) / f"{prefix}XXXXXXXX").absolute()
        typer.echo(
            f"{model} version {recorded.version}: run {recorded.run_id}, commit {commit}, "
            f"arch {recorded.tags.get('arch_sha256', '?')}"
        )
        for warning in rebuild.environment_warnings(recorded):
            typer.echo(f"warning: {warning}", err=True)
        if dry_run:
            if workdir is None:
                typer.echo(f"rebuild folder: a new one, {target} (choose it with --workdir)")
            steps = rebuild.dry_run_steps(recorded, root, target, commit)
            typer.echo("\n".join(f"{n}. {step}" for n, step in enumerate(steps, 1)))
            return
        outcome = rebuild.rebuild(recorded, root, target, echo=typer.echo, tolerance=tolerance)
    except PipelineError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo("\n".join(rebuild.report(outcome)))
    if not outcome.reproduced:
        raise typer.Exit(1)


def _registered_model_name(params: Path) -> str:
    """The name the pipeline registers under: params.yaml's, or the default without one."""
    return _tracking_config(params).registered_model


def _tracking_config(params: Path):
    """params.yaml's ``tracking`` section, or the defaults without the file."""
    from pipeline.config import TrackingConfig, load_config

    return load_config(params).tracking if params.is_file() else TrackingConfig()


@app.command()
def ui(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface the UI listens on.")] = "127.0.0.1",
    params: Annotated[Path, typer.Option(help="Parameters file naming the experiment.")] = Path(
        "params.yaml"
    ),
) -> None:
    """Start the MLflow UI on this project's store and, once it answers, print the address
    of the experiment's runs in the model-training view (MLflow 3 otherwise opens on its
    GenAI view). With MLFLOW_TRACKING_URI set to a server, only print that server's address."""
    import sys

    from pipeline import tracking
    from pipeline.errors import PipelineError
    from pipeline.tracking.ui import check_port_free, model_training_url, run_ui

    uri = tracking.resolve_tracking_uri(Path.cwd())
    experiment = _tracking_config(params).experiment
    db_path = tracking.sqlite_db_path(uri)
    try:
        if db_path is not None and not db_path.is_file():
            raise PipelineError(
                f"there is no tracking store {db_path}: run the pipeline here first "
                "(`uv run dvc repro`), or run jst ui in the project folder"
            )
        tracking.check_tracking_available(uri)
        if db_path is not None:  # jst ui serves it: the port must be free
            check_port_free(host, port)
        served_at = uri if db_path is None else f"http://{host}:{port}"
        address = model_training_url(served_at, uri, experiment)
    except PipelineError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    if db_path is None:  # a tracking server: it serves the UI itself
        typer.echo(f"experiment {experiment!r}: {address}")
        return
    mlflow = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    typer.echo(f"starting MLflow's UI on {uri} (it takes a few seconds; Ctrl-C stops it)")

    def ready() -> None:
        typer.echo(f"experiment {experiment!r}: {address}")

    try:
        status = run_ui(command, f"http://{probe_host}:{port}/health", ready)
    except TimeoutError as err:
        typer.echo(f"error: {err}; is port {port} free? (jst ui --port N)", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(status)


tracking_app = typer.Typer(help="MLflow tracking: spooled calls.", no_args_is_help=True)
app.add_typer(tracking_app, name="tracking")


@tracking_app.command("replay")
def tracking_replay() -> None:
    """Log the MLflow calls that stages spooled in .mlflow-spool/ while the store was away."""
    from pipeline import tracking
    from pipeline.errors import PipelineError

    root = Path.cwd()
    uri = tracking.resolve_tracking_uri(root)
    directory = tracking.spool_directory(root)
    try:
        tracking.check_tracking_available(uri)
    except PipelineError as err:
        typer.echo(f"error: {err} The spool {directory} is kept.", err=True)
        raise typer.Exit(1) from None
    replayed, left = tracking.replay_spooled(uri, root)
    typer.echo(f"replayed {replayed} call(s) to {uri}; {left} spool file(s) left in {directory}")
    if left:
        typer.echo(
            "Spool files left are in use by a running stage, were logged for another tracking "
            "URI, or failed (see the warnings above); rerun `jst tracking replay` later.",
            err=True,
        )
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
