"""ONNX models in the MLflow model registry: logged with their signature, registered, aliased."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import ArtifactError
from pipeline.tracking.client import global_tracking_uri, is_already_exists, make_client
from pipeline.tracking.description import model_version_description
from pipeline.tracking.store import (
    check_tracking_available,
    resolve_tracking_uri,
    sqlite_db_path,
)

REGISTRY_PREFIX = "models:/"
REGISTRY_FORMS = "models:/<name>@<alias> or models:/<name>/<version>"


def register_onnx_model(client: Any, tracking_uri: str, op: Mapping[str, Any]) -> str:
    """Run a recorded ``register_onnx_model`` call (see ``StageRun.register_onnx_model``):
    log the ONNX file as a model of the run, register it as a new version, point the alias at
    it; return the version."""
    model = load_onnx(op["path"])
    name, run_id = op["name"], op["run_id"]
    with global_tracking_uri(tracking_uri):
        model_id = _log_onnx_model(client, model, op["experiment_id"], run_id, name)
        _ensure_registered_model(client, name)
        version = client.create_model_version(
            name,
            source=f"models:/{model_id}",
            run_id=run_id,
            tags=op["tags"],
            description=model_version_description(_metadata(model), op["tags"]),
            model_id=model_id,
        ).version
    client.set_registered_model_alias(name, op["alias"], version)
    return str(version)


def _log_onnx_model(
    client: Any, model: Any, experiment_id: str, run_id: str, registered_model_name: str
) -> str:
    import mlflow.onnx

    from pipeline.evaluate import select_providers

    # Created here, in this run's experiment: left to itself, Model.log would put the
    # logged model in the global default experiment, as no fluent run is active.
    logged = client.create_logged_model(
        experiment_id, name=_logged_model_name(registered_model_name), source_run_id=run_id
    )
    mlflow.onnx.log_model(
        model,
        name=logged.name,
        run_id=run_id,
        model_id=logged.model_id,
        signature=onnx_signature(model),
        # Explicit requirements skip MLflow's inference, which reloads the model in a
        # subprocess.
        pip_requirements=mlflow.onnx.get_default_pip_requirements(),
        # What `mlflow models serve` asks ONNX Runtime for: CUDA only where this host can run
        # it. MLflow's default tries CUDA first everywhere, and onnxruntime-gpu on a host
        # without a GPU prints an error (missing CUDA libraries) before falling back to CPU.
        onnx_execution_providers=select_providers("auto"),
        # One self-contained file unless protobuf's 2 GiB limit forces external data.
        save_as_external_data=model.ByteSize() >= 2**31 - 2**20,
    )
    return logged.model_id


def _ensure_registered_model(client: Any, name: str) -> None:
    try:
        client.create_registered_model(name)
    except Exception as error:  # a parallel experiment may have created it first
        if not is_already_exists(error):
            raise


def load_onnx(onnx_path: Path | str) -> Any:
    """The ONNX model at ``onnx_path``; an ``ArtifactError`` when missing or invalid."""
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise ArtifactError(f"Cannot register ONNX model {path}: the file does not exist.")
    try:
        return onnx.load(str(path))
    except Exception as error:
        raise ArtifactError(
            f"Cannot register ONNX model {path}: it is not a valid ONNX file ({error}). "
            "Re-run the export stage."
        ) from error


def _metadata(model: Any) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def _logged_model_name(registered_model_name: str) -> str:
    return re.sub(r"[/:.%\"']", "_", registered_model_name)


def onnx_signature(model: Any) -> Any:
    """The MLflow signature of an ONNX graph; symbolic dimensions (the batch) become -1."""
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(value_info: Any) -> TensorSpec:
        tensor_type = value_info.type.tensor_type
        shape = tuple(
            dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim
        )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        return TensorSpec(dtype, shape, value_info.name)

    initializers = {initializer.name for initializer in model.graph.initializer}
    inputs = [spec(value) for value in model.graph.input if value.name not in initializers]
    outputs = [spec(value) for value in model.graph.output]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def download_registered_model(reference: str, repo_root: Path, destination: Path) -> Path:
    """Download a registered ONNX model version into ``destination``; its .onnx file."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    _check_registry_reference(reference)
    # A progress bar per download would clutter `jst predict`'s output; a user's setting wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = resolve_tracking_uri(repo_root)
    db_path = sqlite_db_path(uri)
    if db_path is not None and not db_path.is_file():  # MLflow would create an empty store
        raise ArtifactError(
            f"cannot resolve {reference}: there is no tracking store {db_path}; run the "
            "pipeline here first, run jst predict in the project folder, or set "
            "MLFLOW_TRACKING_URI to the store that registered the model"
        )
    check_tracking_available(uri)
    make_client(uri)  # an old schema is migrated under the creation lock, as by the stages
    try:
        folder = download_artifacts(
            artifact_uri=reference, dst_path=str(destination), tracking_uri=uri, registry_uri=uri
        )
    except MlflowException as error:
        reason = str(error.message).splitlines()[0][:300]
        raise ArtifactError(
            f"cannot resolve {reference} in the registry {uri}: {reason}. Check the model "
            "name and alias or version (`uv run mlflow ui`), e.g. models:/compact-cnn@newest"
        ) from None
    files = sorted(Path(folder).rglob("*.onnx"))
    if len(files) != 1:
        raise ArtifactError(
            f"{reference} holds {len(files)} .onnx files, expected one; register an ONNX "
            "model with the evaluate stage"
        )
    return files[0]


def _check_registry_reference(reference: str) -> None:
    rest = reference.removeprefix(REGISTRY_PREFIX)
    name, _, selector = rest.partition("@") if "@" in rest else rest.partition("/")
    if not name or not selector or "/" in selector:
        raise ArtifactError(f"model URI {reference!r} is not of the form {REGISTRY_FORMS}")
