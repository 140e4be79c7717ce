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


class TrainingDiverged(PipelineError):
    """The loss became NaN or infinite; raised before the bad step is applied."""
