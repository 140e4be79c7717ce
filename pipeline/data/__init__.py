"""Data sets as uint8 splits, in memory or streamed from shards: loading, splitting,
storage and batching.

See docs/CONTRACTS.md (pipeline/data) for the contract other modules rely on.
"""

from pipeline.data.datasets import DATASETS, load_dataset, prepare_dataset, resize_images
from pipeline.data.loader import Augment, BatchLoader, augment_batch
from pipeline.data.prepared import (
    SPLIT_NAMES,
    ImageSplit,
    PreparedData,
    Split,
    channel_stats,
    describe,
    normalize,
)
from pipeline.data.splits import check_fractions, stratified_split
from pipeline.data.storage import load_prepared, save_prepared
from pipeline.data.streaming import ShardedSplit, StreamingLoader

__all__ = [
    "DATASETS",
    "SPLIT_NAMES",
    "Augment",
    "BatchLoader",
    "ImageSplit",
    "PreparedData",
    "ShardedSplit",
    "Split",
    "StreamingLoader",
    "augment_batch",
    "channel_stats",
    "check_fractions",
    "describe",
    "load_dataset",
    "load_prepared",
    "normalize",
    "prepare_dataset",
    "resize_images",
    "save_prepared",
    "stratified_split",
]
