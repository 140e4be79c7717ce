"""One rank of a short JST and l1 search under ``torchrun``: the data-parallel training path
of the search stage (pipeline/distributed.py) on this machine's device, one process per GPU.

    python -m torch.distributed.run --standalone --nproc_per_node=1 \\
        benchmarks/gpu_torchrun.py --device cuda --out result.json

With one process, ``distributed.init_from_env`` leaves the process group alone (every
collective of pipeline/distributed.py is a no-op at world size 1), so this script joins
the group itself, with the backend ``init_from_env`` would pick (NCCL on CUDA, gloo on
the CPU), and checks one all-reduce and one broadcast on it before the searches. With
several processes it is ``init_from_env`` that joins. Rank 0 writes ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from bench_common import add_data_arguments, benchmark_split
from search_cost import search_config

from pipeline import distributed
from pipeline.config import parse_config
from pipeline.methods import SearchContext, get_method
from pipeline.train import evaluate, resolve_device, seed_everything

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--epochs", type=float, default=4, help="search.epochs of each method")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    distributed.init_from_env()
    device = resolve_device(args.device)
    if "RANK" in os.environ and not distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(distributed.local_rank())
        dist.init_process_group(backend)
    if device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank())
    record: dict = {
        "under_torchrun": "RANK" in os.environ,
        "backend": dist.get_backend() if distributed.is_initialized() else None,
        "world_size": dist.get_world_size() if distributed.is_initialized() else 1,
        "device": str(device),
        "torch": torch.__version__,
    }
    try:
        if distributed.is_initialized():  # the group itself works on this device
            probe = torch.full((4,), float(distributed.rank() + 1), device=device)
            dist.all_reduce(probe)
            expected = sum(range(1, record["world_size"] + 1))
            record["all_reduce_ok"] = bool(torch.all(probe == expected).item())
            box = [distributed.rank()]
            dist.broadcast_object_list(box, src=0)
            record["broadcast_ok"] = box[0] == 0
        data = benchmark_split(args.dataset, args.data, args.image_size, 0)
        train = {"device": args.device, "batch_size": 128}
        configs = {
            "jst": search_config(args.arch, 0.5, args.epochs, train),
            "l1": parse_config(
                {
                    "model": {"arch": args.arch},
                    "train": train,
                    "search": {"method": "l1", "target_flops": 0.5, "epochs": args.epochs},
                }
            ),
        }
        record["methods"] = {}
        for method, cfg in configs.items():
            seed_everything(0)
            start = time.perf_counter()
            result = get_method(method)(SearchContext(cfg, data, device))
            record["methods"][method] = {
                "wall_s": time.perf_counter() - start,
                "val_top1": evaluate(result.model.to(device), data.val, data, device)["top1"],
                "flops_ratio": result.summary["flops_ratio"],
                "arch_sha256": result.spec.sha256,
            }
            print(json.dumps({method: record["methods"][method]}), flush=True)
        # every rank must have found rank 0's architecture
        shas = {m: r["arch_sha256"] for m, r in record["methods"].items()}
        record["ranks_agree"] = distributed.broadcast_object(shas) == shas
        if distributed.is_initialized():
            agree = torch.tensor([int(record["ranks_agree"])], device=device)
            dist.all_reduce(agree, op=dist.ReduceOp.MIN)
            record["ranks_agree"] = bool(agree.item())
    finally:
        if distributed.is_main():
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(record, indent=2) + "\n")
        distributed.shutdown()


if __name__ == "__main__":
    main()
