"""Values made fit for MLflow: flattened parameters, finite metrics, MLflow's size limits."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation); the server rejects anything larger.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

_T = TypeVar("_T")


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters as ``{"search.target_flops": "0.5"}``, within MLflow's length limit."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = truncate(_param_text(value), MAX_PARAM_VALUE_LENGTH)
    return flat


def _param_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return json.dumps(list(value), default=str)
    return str(value)


def truncate(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters with a marker saying so."""
    marker = "...[truncated]"
    return text if len(text) <= limit else text[: limit - len(marker)] + marker


def finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics that are finite numbers (tensors and numpy scalars included), as floats."""
    kept: dict[str, float] = {}
    for key, value in metrics.items():
        number = _as_float(value)
        if number is None or not math.isfinite(number):
            logger.debug("Not logging metric %s=%r: not a finite number", key, value)
            continue
        kept[key] = number
    return kept


def _as_float(value: Any) -> float | None:
    if isinstance(value, str | bytes):  # "1.5" is a mistake upstream, not a metric
        return None
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: multi-element tensor
        return None


def chunks(items: list[_T], size: int) -> Iterator[list[_T]]:
    """``items`` in consecutive batches of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
