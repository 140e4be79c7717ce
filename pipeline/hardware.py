"""What the deployment hardware wants from a compact model: the channel block its
convolution kernels compute in.

ONNX Runtime's CPU convolutions run in a blocked NCHWc layout whose block is the SIMD
width in floats: 16 on AVX-512, 8 on AVX2. A width that is not a multiple of the block
is padded up to it, so the padded channels cost time but count no FLOPs
(docs/performance.md measures it). ``search.round_to: auto`` rounds kept widths to this
block.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

GPU_CHANNEL_BLOCK = 8  # tensor-core friendly widths


def deployment_channel_block(evaluate_device: str) -> int:
    """The channel block of the runtime the evaluate stage deploys to on this machine
    (``evaluate.device``: CUDA when it asks for it or, under auto, a GPU is visible)."""
    if evaluate_device == "cuda" or (evaluate_device == "auto" and torch.cuda.is_available()):
        return GPU_CHANNEL_BLOCK
    return cpu_channel_block()


def cpu_channel_block() -> int:
    """16 floats on AVX-512 CPUs, 8 elsewhere (AVX2, and CPUs ONNX Runtime does not
    block for, where 8 costs little)."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


def processor_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
