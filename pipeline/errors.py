"""User-facing errors.

Every error a user can cause (bad parameters, bad data, mismatched files) is raised as a
``PipelineError`` whose message says what is wrong and how to fix it. The CLI prints the
message alone, without a traceback, and exits non-zero.
"""


class PipelineError(Exception):
    """An error the user can fix; its message names the parameter or file and the fix."""


class ConfigError(PipelineError):
    """A parameter in params.yaml is missing, unknown or out of range."""


class DataError(PipelineError):
    """A data set, folder or image cannot be used."""


class ArtifactError(PipelineError):
    """A model file (architecture spec, weights, ONNX) is missing, corrupt or mismatched."""


def restore_output_hint(path: object) -> str:
    """How to get a damaged or deleted pipeline output back (an ONNX file, a model folder):
    the committed version from the DVC cache, or a rebuild by the stages that write it."""
    return (
        f"restore the committed one from the DVC cache with `uv run dvc checkout --force "
        f"{path}` (after `uv run dvc pull` on a fresh clone), or rebuild it with "
        "`uv run dvc repro`"
    )


class TrainingDiverged(PipelineError):
    """Training diverged: the loss became NaN or infinite (raised before the bad step),
    or an epoch ended with its loss or logits past the bounds below (``pipeline.train``)."""


# What counts as diverged (checked after every epoch and JST iteration, and when an export
# fails its parity check); docs/guarantees.md gives the measurements behind both values.
# An epoch whose mean training loss rose above the loss its run started at and past this
# many times ln(classes), the loss of a classifier that knows nothing. Healthy runs on tiny
# data spike to 27x for an epoch and recover (2 classes, batches of 1-8, lr 0.2-0.3).
LOSS_RISE_FACTOR = 50.0
# A |logit| no healthy classifier reaches (those runs: below 100 in training); far inside
# the float32 and bf16 range (both ~3e38), so the same bound holds at either precision.
SANE_LOGIT_BOUND = 1e4
