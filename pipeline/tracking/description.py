"""The description of a registered model version: what the architecture is, in Markdown.

Built from what the registration has: the ONNX file's ``arch_spec`` metadata (model, input,
kept width per channel group) and the version's tags (FLOPs, params, top-1, method), so a
registration replayed from the spool gets the same text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pipeline.tracking.values import truncate

ARCH_SPEC_KEY = "arch_spec"  # ONNX metadata written by the export stage
MAX_DESCRIPTION_LENGTH = 5000  # MLflow's model version description column


def model_version_description(metadata: Mapping[str, str], tags: Mapping[str, str]) -> str:
    """Markdown: model and method, FLOPs/params against the dense model, test top-1, and
    one table row per channel group with its kept and dense width."""
    spec = _arch_spec(metadata)
    lines = [_headline(spec, tags), "", _costs(tags)]  # blank line: Markdown paragraphs
    if spec is not None:
        lines += ["", *_width_table(spec)]
    if "arch_sha256" in tags:
        lines += ["", f"Architecture sha256 `{tags['arch_sha256']}`."]
    return truncate("\n".join(line for line in lines if line is not None), MAX_DESCRIPTION_LENGTH)


def _arch_spec(metadata: Mapping[str, str]) -> dict[str, Any] | None:
    """The spec the export stage wrote; None for an ONNX file without one (or a bad one:
    the description leaves the table out rather than fail the registration)."""
    try:
        spec = json.loads(metadata[ARCH_SPEC_KEY])
        return spec if {"model", "input_shape", "num_classes", "widths"} <= set(spec) else None
    except (KeyError, TypeError, ValueError):
        return None


def _headline(spec: Mapping[str, Any] | None, tags: Mapping[str, str]) -> str:
    words = []
    if spec is not None:
        shape = "×".join(str(size) for size in spec["input_shape"])
        words.append(f"**{spec['model']}** ({shape} input, {spec['num_classes']} classes)")
    if "method" in tags:
        words.append(f"pruned by `{tags['method']}`")
    if tags.get("quantization", "none") != "none":
        words.append(f"{tags['quantization']} quantized")
    return ", ".join(words) + "." if words else "ONNX model."


def _costs(tags: Mapping[str, str]) -> str | None:
    """``FLOPs 5.06 M (0.499 of dense 10.1 M) · params 93.2 k (dense 272 k) · test top-1 …``"""
    parts = []
    if "flops" in tags or "flops_ratio" in tags:
        ratio = f"{float(tags['flops_ratio']):.3f} of " if "flops_ratio" in tags else ""
        dense = f"dense {_si(tags['dense_flops'])}" if "dense_flops" in tags else "dense"
        flops = f"FLOPs {_si(tags['flops'])} " if "flops" in tags else "FLOPs "
        parts.append(f"{flops}({ratio}{dense})")
    if "params" in tags:
        dense = f" (dense {_si(tags['dense_params'])})" if "dense_params" in tags else ""
        parts.append(f"params {_si(tags['params'])}{dense}")
    if "top1" in tags:
        parts.append(f"test top-1 {100 * float(tags['top1']):.2f} %")
    return " · ".join(parts) if parts else None


def _width_table(spec: Mapping[str, Any]) -> list[str]:
    widths: Mapping[str, int] = spec["widths"]
    dense = _dense_widths(spec)
    groups = [group for group in dense if group in widths] if dense else sorted(widths)
    cells = [(group, str(widths[group]), str(dense.get(group, "?"))) for group in groups]
    kept, total = sum(widths.values()), sum(dense.values()) if dense else None
    if total:
        cells.append(("**all**", str(kept), str(total)))
    return aligned_table(("channel group", "kept", "dense"), cells)


def aligned_table(header: tuple[str, ...], cells: list[tuple[str, ...]]) -> list[str]:
    """A Markdown table whose columns line up in plain text too (the registry's description
    is read raw as often as rendered): names left, numbers right."""
    widths = [max(len(row[i]) for row in (header, *cells)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        numbers = zip(row[1:], widths[1:], strict=True)
        padded = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in numbers]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]])
    return [line(header), rule + "|", *(line(row) for row in cells)]


def _dense_widths(spec: Mapping[str, Any]) -> dict[str, int]:
    """The dense model's width per group, in the model's order ({} for a model this code
    does not know, e.g. one registered by another version of it)."""
    from pipeline.errors import PipelineError
    from pipeline.pruning.slicing import dense_spec

    try:
        dense = dense_spec(spec["model"], tuple(spec["input_shape"]), spec["num_classes"])
    except (PipelineError, KeyError, ValueError):
        return {}
    return dict(dense.widths)


def _si(value: str | float) -> str:
    """``5056832`` as ``5.06 M``."""
    number = float(value)
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= factor:
            return f"{number / factor:.3g} {suffix}"
    return f"{number:g}"
