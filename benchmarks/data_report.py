"""The measured block of docs/data.md, generated from ``benchmarks/results/streaming.json``
(``benchmarks/streaming.py``): peak memory of a search over in-memory vs streamed data at
two sizes, and loader vs training throughput.

``BLOCKS`` has the shape of ``published.BLOCKS``.
"""

from __future__ import annotations

from collections.abc import Callable

from records import machine_text, result

DOC = "docs/data.md"
MB = 2**20


def streaming() -> str:
    record = result("streaming")
    sizes = sorted(record["sizes"].values(), key=lambda entry: entry["images"])
    small, large = sizes[0], sizes[-1]
    lines = [
        f"`uv run python benchmarks/streaming.py --sizes {small['images']} {large['images']} "
        f"--side {record['side']}` (commit `{record['commit']}`, {machine_text(record['machine'])}"
        f"; synthetic {record['side']} px JPEG folders of 10 classes). Peak RSS of a JST search "
        f"({record['search_epochs']} epochs, batch {record['batch_size']}, "
        f"{record['workers']} decoding workers for shards) in a fresh process:",
        "",
        "| images | decoded | form | on disk | prepare | search | peak RSS, main "
        "| largest worker |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in sizes:
        for form in ("memory", "shards"):
            run = entry[form]
            lines.append(
                f"| {entry['images']:,} | {entry['decoded_mb']:.0f} MB | {form} | "
                f"{run['disk_mb']:.0f} MB | {run['prepare_s']:.1f} s | "
                f"{run['peak_rss']['wall_s']:.0f} s | "
                f"{run['peak_rss']['main'] / MB:.0f} MB | {_worker(run['peak_rss'])} |"
            )
    decoded = large["decoded_mb"] - small["decoded_mb"]
    growth = {
        form: (large[form]["peak_rss"]["main"] - small[form]["peak_rss"]["main"]) / MB
        for form in ("memory", "shards")
    }
    rate = record["throughput"]
    loader = [r["loader_images_s"] for r in rate["rounds"]]
    steps = [r["train_images_s"] for r in rate["rounds"]]
    lines += [
        "",
        f"From {small['images']:,} to {large['images']:,} images ({decoded:.0f} MB more decoded) "
        f"the main process grows by {growth['shards']:.0f} MB on shards "
        f"({100 * growth['shards'] / decoded:.0f} % of the decoded difference) and by "
        f"{growth['memory']:.0f} MB in memory. Throughput on {large['images']:,} images, "
        f"{len(loader)} alternating rounds: the training loader ({record['workers']} workers, "
        f"decoding and augmentation) {min(loader):.0f}–{max(loader):.0f} images/s, ResNet-20 "
        f"training steps at {record['side']} px {min(steps):.0f}–{max(steps):.0f} images/s: "
        f"**{rate['ratio_median']:.1f}×** (median ratio) what the model consumes.",
    ]
    return "\n".join(lines)


def _worker(peak: dict) -> str:
    """A worker's peak RSS counts the pages it shares with the main process it forked from."""
    return f"{peak['largest_worker'] / MB:.0f} MB" if peak["largest_worker"] else "none"


BLOCKS: dict[tuple[str, str], Callable[[], str]] = {(DOC, "streaming"): streaming}
