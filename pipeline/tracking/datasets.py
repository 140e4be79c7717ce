"""The prepared data set as an MLflow dataset input of a run (the UI's Dataset column).

A dataset is described by a JSON-able record (so that its ``log_inputs`` call can be spooled):
name, digest, where it came from (``source_type`` + ``source``), a schema of its tensors and a
profile with the split sizes, image shape and classes. The digest is the md5 DVC records for
``data/prepared`` in ``dvc.lock``, so a run's dataset can be matched with a DVC revision.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONTEXT_TAG = "mlflow.data.context"  # MLflow's input tag: what the run used the data for
PIPELINE_CONTEXT = "training"  # the context on the pipeline's parent run

# Where the data sets that need no folder come from.
BUNDLED_SOURCES = {"digits": "sklearn.datasets.load_digits"}
# Data sets read from ``data.root`` that have a fixed name; an image folder is named by it.
NAMED_SOURCES = ("cifar10", "cifar100")


def dataset_origin(dataset: str, root: Path | str) -> dict[str, str]:
    """Name and source of data set ``dataset`` (``data.dataset``) read from ``root``
    (``data.root``): MLflow's "code" source for bundled data, else the "local" folder."""
    if dataset in BUNDLED_SOURCES:
        source = {"tags": {"mlflow.source.name": BUNDLED_SOURCES[dataset]}}
        return {"name": dataset, "source_type": "code", "source": json.dumps(source)}
    folder = Path(root).resolve()
    name = dataset if dataset in NAMED_SOURCES else folder.name
    return {"name": name, "source_type": "local", "source": json.dumps({"uri": str(folder)})}


def prepared_dataset(
    prepared_dir: Path | str, digest: str, origin: Mapping[str, str]
) -> dict[str, str]:
    """The dataset record of the prepared splits in ``prepared_dir`` (DVC md5 ``digest``),
    which came from ``origin`` (``dataset_origin``)."""
    from pipeline.data.storage import load_prepared_meta

    meta = load_prepared_meta(prepared_dir)
    channels, height, width = meta.input_shape
    profile = {
        "splits": meta.sizes,
        "num_rows": sum(meta.sizes.values()),
        "input_shape": list(meta.input_shape),
        "num_classes": len(meta.classes),
        "classes": meta.classes,
        "dataset": meta.dataset,
        "storage": meta.storage,
        "size_bytes": sum(f.stat().st_size for f in Path(prepared_dir).rglob("*") if f.is_file()),
    }
    if meta.storage == "shards":
        profile["shards"] = {split: len(files) for split, files in meta.shards.items()}
    schema = {  # the format of MLflow's tensor datasets (NumpyDataset)
        "mlflow_tensorspec": {
            "features": _tensor_spec("images", "uint8", [-1, channels, height, width]),
            "targets": _tensor_spec("labels", "int64", [-1]),
        }
    }
    return {
        **origin,
        "digest": digest,
        "schema": json.dumps(schema),
        "profile": json.dumps(profile),
    }


def dataset_inputs(records: list[Mapping[str, str]], context: str) -> list[Any]:
    """MLflow ``DatasetInput`` entities of dataset records, tagged with ``context``."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    return [
        DatasetInput(
            Dataset(
                name=record["name"],
                digest=record["digest"],
                source_type=record["source_type"],
                source=record["source"],
                schema=record.get("schema"),
                profile=record.get("profile"),
            ),
            tags=[InputTag(CONTEXT_TAG, context)],
        )
        for record in records
    ]


def _tensor_spec(name: str, dtype: str, shape: list[int]) -> str:
    return json.dumps(
        [{"name": name, "type": "tensor", "tensor-spec": {"dtype": dtype, "shape": shape}}]
    )
