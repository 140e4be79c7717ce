"""Could JST's own target network teach its sub-network (in-place distillation)?

In-place distillation (slimmable networks, OFA, BigNAS) lets the widest network teach the
sampled one. JST never trains its widest network after the warm-up: each iteration trains
one sub-network and writes it back, and the filters it left out keep the weights of the
last sub-network that held them. This probe runs the shipped search and, after every
iteration, measures on validation the full-width target (gated, BN statistics re-estimated
on the iteration's calibration batches) beside the sub-network just trained. A teacher
that is no more accurate than its student has nothing to teach; a widest network trained
in every step (the sandwich rule) would, at about a dense step's cost per step.

    uv run python benchmarks/teacher_probe.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
from pathlib import Path

from bench_common import add_data_arguments, benchmark_split, run_provenance
from compare_methods import config_for

from pipeline.methods import SearchContext
from pipeline.methods.jst.gates import gates_of
from pipeline.methods.jst.search import JointSearch
from pipeline.pruning.gates import gated
from pipeline.train import evaluate, recalibrate_bn, resolve_device, seed_everything

ROOT = Path(__file__).resolve().parents[1]


class TeacherProbe(JointSearch):
    """The shipped search, measuring its full-width target after every iteration."""

    def _iteration(self, t: int) -> dict:
        record = super()._iteration(t)
        target = copy.deepcopy(self.setup.model)  # re-estimating BN must not touch the search
        gates = {g: gates_of(a).to(self.device) for g, a in self.alpha.items()}
        with gated(target, self.setup.layout, gates):
            recalibrate_bn(target, self._calibration_batches(t))
            top1 = evaluate(target, self.data.val, self.data, self.device)["top1"]
        return record | {"target_val_top1": top1}


def probe(args, seed: int) -> dict:
    cfg = config_for(args, "jst", args.budget, seed, {})
    data = benchmark_split(args.dataset, args.data, args.image_size, seed)
    device = resolve_device(cfg.train.device)
    seed_everything(seed)
    result = TeacherProbe(SearchContext(cfg, data, device)).run()
    keys = ("iteration", "budget", "frozen", "arch_sha256", "val_top1", "target_val_top1")
    return {
        "arch": args.arch,
        "budget": args.budget,
        "seed": seed,
        "search_epochs": args.search_epochs,
        "precision": args.precision,
        "iterations": [{k: h.get(k) for k in keys} for h in result.history],
        **run_provenance(device),
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--budget", type=float, default=0.3)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--search-epochs", type=int, default=12)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/teacher_probe.json"))
    args = p.parse_args(argv)
    # what config_for reads besides these; the fine-tuning is not run
    args.budget_metric, args.round_to, args.finetune_epochs, args.finetune_lr = "flops", 8, 1, 0.02
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["uv", "run", "python", "benchmarks/teacher_probe.py", *given])
    out = Path(args.out)
    store = json.loads(out.read_text()) if out.exists() else {"runs": []}
    for seed in args.seeds:
        record = probe(args, seed)
        record["command"] = command
        same = ("arch", "budget", "seed", "search_epochs", "precision")
        others = [r for r in store["runs"] if any(r[k] != record[k] for k in same)]
        store["runs"] = [*others, record]
        out.write_text(json.dumps(store, indent=2) + "\n")


if __name__ == "__main__":
    main()
