"""Data at scale: the memory of a search over streamed (sharded) data, and whether the
loader keeps the model fed.

For each size in ``--sizes`` it writes a synthetic image folder (10 classes of smooth
random JPEGs, ``--side`` px), prepares it twice, in memory and as shards
(``data.max_memory_mb`` 1), and records:

* ``peak_rss``: the peak resident memory (RSS) of a JST search (``--search-epochs``
  epochs, one iteration, of ``small_cnn``: the data, not the network, is what grows) in a
  fresh process: the main process and its largest child (the decoding workers);
* ``prepare_s``: the wall time of the sharded prepare, and the shards' size on disk.

Then, on the largest size, ``--rounds`` alternating rounds of: one epoch of the training
loader alone (``train.workers`` decoding processes, augmentation included) and
``--steps`` ResNet-20 training steps on batches already on the device; images/s of each
and their ratio (the loader must deliver at least 2x what the model consumes).

    uv run python benchmarks/streaming.py --sizes 6000 24000 --side 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from bench_common import ROOT, run_provenance
from PIL import Image

from pipeline.config import parse_config
from pipeline.data import StreamingLoader, load_prepared, prepare_dataset
from pipeline.data.loader import Augment
from pipeline.methods import SearchContext, get_method
from pipeline.models import create_model
from pipeline.train import make_optimizer, resolve_device, seed_everything, train_steps

CLASSES = 10
SPLITS = {"val_fraction": 0.1, "test_fraction": 0.1, "seed": 0}
OUT = ROOT / "benchmarks" / "results" / "streaming.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[6000, 24000])
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/jst-bench-streaming"))
    parser.add_argument("--search-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--reuse-rss", action="store_true", help="keep --out's memory records")
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)  # internal: one search
    return parser.parse_args()


def _write_image(job) -> None:
    path, seed, side = job
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC)
    image.save(path, quality=90)


def image_folder(cache: Path, size: int, side: int) -> Path:
    root = cache / f"folder-{size}-{side}"
    done = root / ".complete"
    if done.exists():
        return root
    jobs = []
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        jobs += [
            (root / f"class{c}" / f"{i:06d}.jpg", c * size + i, side)
            for i in range(size // CLASSES)
        ]
    with Pool(2) as pool:
        pool.map(_write_image, jobs, chunksize=256)
    done.touch()
    return root


def small_cnn(num_classes: int, in_channels: int):
    """The probe's network: three conv-BN-ReLU blocks, so the search's time goes to data."""
    from torch import nn

    layers, width = [], in_channels
    for out in (16, 32, 64):
        layers += [nn.Conv2d(width, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out)]
        layers += [nn.ReLU(inplace=True)]
        width = out
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)
    )


def search_config(args):
    return parse_config(
        {
            "model": {"arch": "benchmarks.streaming:small_cnn"},
            "train": {"batch_size": args.batch_size, "workers": args.workers},
            "search": {
                "epochs": args.search_epochs,
                "jst": {"iterations": 1, "warmup_epochs": args.search_epochs - 1},
            },
        }
    )


def probe(args) -> None:
    """One JST search over the prepared data at ``args.probe``; prints its peak RSS."""
    data = load_prepared(args.probe)
    cfg = search_config(args)
    device = resolve_device("cpu")
    seed_everything(0)
    watch = ChildrenPeak()
    watch.start()
    get_method("jst")(SearchContext(cfg, data, device))
    watch.stop = True
    watch.join()
    print(json.dumps({"main": peak_of("self"), "largest_worker": watch.peak}))


def peak_of(pid: str) -> int:
    """The peak RSS (VmHWM) of process ``pid``: of its own memory since its exec, unlike
    getrusage's ru_maxrss, which Linux carries over from the process that forked it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class ChildrenPeak(threading.Thread):
    """The largest RSS any child process (a decoding worker) reaches, polled."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.stop = 0, False

    def run(self) -> None:
        while not self.stop:
            for child in Path("/proc/self/task").glob("*/children"):
                for pid in child.read_text().split():
                    with contextlib.suppress(OSError):  # it ended meanwhile
                        self.peak = max(self.peak, peak_of(pid))
            time.sleep(0.2)


def peak_rss(args, prepared: Path) -> dict:
    command = [sys.executable, __file__, "--probe", str(prepared)]
    command += ["--search-epochs", str(args.search_epochs), "--batch-size", str(args.batch_size)]
    command += ["--workers", str(args.workers)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1]) | {
        "wall_s": time.perf_counter() - start
    }


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def throughput(args, prepared: Path) -> dict:
    """Loader images/s vs ResNet-20 training images/s, alternated, on the same machine."""
    data = load_prepared(prepared)
    loader = StreamingLoader(
        data.train,
        data.mean,
        data.std,
        batch_size=args.batch_size,
        shuffle=True,
        augment=Augment(4, True),
        workers=args.workers,
    )
    channels, side, _ = data.input_shape
    model = create_model("resnet20", num_classes=CLASSES, in_channels=channels, input_size=side)
    settings = parse_config({}).train
    optimizer = make_optimizer(model, 0.05, settings)
    shape = (args.batch_size, *data.input_shape)
    batches = [(torch.randn(shape), torch.randint(0, CLASSES, (args.batch_size,)))] * args.steps
    train_steps(model, iter(batches[:3]), 3, optimizer, settings)  # warm-up
    rounds = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        seen = sum(len(y) for _, y in loader)
        loader_rate = seen / (time.perf_counter() - start)
        start = time.perf_counter()
        train_steps(model, iter(batches), args.steps, optimizer, settings)
        step_rate = args.steps * args.batch_size / (time.perf_counter() - start)
        rounds.append({"loader_images_s": loader_rate, "train_images_s": step_rate})
    ratios = [r["loader_images_s"] / r["train_images_s"] for r in rounds]
    return {"rounds": rounds, "ratio_median": statistics.median(ratios), "ratios": ratios}


def main() -> None:
    args = parse_args()
    if args.probe:
        probe(args)
        return
    record = {
        "side": args.side,
        "search_epochs": args.search_epochs,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "sizes": {},
        **run_provenance(torch.device("cpu")),
    }
    if args.reuse_rss:  # measure the throughput again (e.g. on a quieter machine)
        record["sizes"] = json.loads(args.out.read_text())["sizes"]
    for size in [] if args.reuse_rss else args.sizes:
        folder = image_folder(args.cache, size, args.side)
        entry = {"images": size, "decoded_mb": size * 3 * args.side**2 / 2**20}
        for form, budget in (("shards", 1), ("memory", 1 << 20)):
            prepared = args.cache / f"prepared-{size}-{args.side}-{form}"
            start = time.perf_counter()
            prepare_dataset(
                "imagefolder",
                folder,
                prepared,
                image_size=args.side,
                max_memory_mb=budget,
                **SPLITS,
            )
            entry[form] = {
                "prepare_s": time.perf_counter() - start,
                "disk_mb": folder_bytes(prepared) / 2**20,
                "peak_rss": peak_rss(args, prepared),
            }
            print(size, form, entry[form], flush=True)
        record["sizes"][str(size)] = entry
    largest = args.cache / f"prepared-{max(args.sizes)}-{args.side}-shards"
    record["throughput"] = throughput(args, largest)
    print(record["throughput"], flush=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
