"""The pipeline's parameters (params.yaml), validated once at the edge.

Every stage loads the *whole* file through ``load_config``, so a bad value anywhere is
reported by the first stage that runs, before any work starts and before any output is
touched. Errors name the parameter and say what is allowed. Names that registries
resolve (``search.method``, ``model.arch``) are checked by their registry, where they are
used (``stages.common.resolve_names`` looks them up before any stage's work): this module
imports neither torch nor any registry.

The defaults here are the shipped pipeline: ``params.yaml`` writes out every one of them
(a test keeps the two equal), so deleting a line from it changes nothing.
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder")
# model.weights naming torchvision weights (e.g. ResNet18_Weights.IMAGENET1K_V1), not a file.
TORCHVISION_WEIGHTS = re.compile(r"[A-Za-z]\w*_Weights\.[A-Za-z]\w*")


class _Section(BaseModel):
    # NaN and inf are never a sensible parameter; pydantic would let them past unbounded fields.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML reads yes/no/on/off as booleans and pydantic would quietly take them as 1/0.
        items = value if isinstance(value, list) else [value]
        annotation = cls.model_fields[info.field_name].annotation
        numeric = _mentions(annotation, (int, float)) and not _mentions(annotation, (bool,))
        if numeric and any(isinstance(v, bool) for v in items):
            raise ValueError("expected a number, not a boolean (true/false, yes/no, on/off)")
        return value


class DataConfig(_Section):
    dataset: str = "digits"
    root: str = "data/raw"
    download: bool = False
    image_size: int | None = Field(16, ge=4, le=1024)
    crop_ratio: float | None = Field(None, gt=0, le=1)
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    max_memory_mb: int = Field(4096, ge=0, le=1_048_576)
    max_side: int = Field(512, ge=4, le=16384)

    @model_validator(mode="after")
    def _crop_ratio_for_folders(self) -> DataConfig:
        if self.crop_ratio is not None and (self.dataset != "imagefolder" or not self.image_size):
            raise ValueError(
                "data.crop_ratio applies to imagefolder data with an image_size; set it to null "
                "for this data set (or set data.image_size)"
            )
        return self

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        if v not in DATASETS:
            raise ValueError(f"unknown data set {v!r}; choose one of {', '.join(DATASETS)}")
        return v

    @field_validator("root")
    @classmethod
    def _usable_path(cls, v: str) -> str:
        # The OS refuses these with errors that would otherwise surface mid-stage.
        if "\x00" in v or any(len(part.encode()) > 255 for part in Path(v).parts):
            raise ValueError("must be a folder path without NUL characters or names over 255 bytes")
        return v


class ModelConfig(_Section):
    """``arch``: a registered model, a torchvision classification CNN or
    "package.module:factory" (resolved by pipeline.models, checked where it is resolved).
    ``weights``: the trained dense model to start from (pipeline.models.weights): a
    safetensors file of its state_dict, or a torchvision weights name; null: from scratch."""

    arch: str = Field("resnet20", min_length=1)
    weights: str | None = None

    @field_validator("weights")
    @classmethod
    def _safetensors_or_torchvision_name(cls, v: str | None) -> str | None:
        if v is None or TORCHVISION_WEIGHTS.fullmatch(v):
            return v
        if "\x00" in v or not v.strip():
            raise ValueError("must be a file path, a torchvision weights name or null")
        if not v.endswith(".safetensors"):
            raise ValueError(
                "must be a .safetensors file of the dense model's state_dict (pickles such as "
                "torch.save's .pt/.pth are never loaded: convert one with safetensors.torch."
                "save_file(torch.load(f, weights_only=True), 'dense.safetensors')), a "
                "torchvision weights name such as ResNet18_Weights.IMAGENET1K_V1, or null"
            )
        return v


class AugmentConfig(_Section):
    crop_padding: int = Field(1, ge=0, le=64)
    hflip: bool = False
    random_resized_crop: list[float] | None = None

    @model_validator(mode="after")
    def _one_crop(self) -> AugmentConfig:
        scale = self.random_resized_crop
        if scale is None:
            return self
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(
                f"train.augment.random_resized_crop = {list(scale)} is invalid; give the area "
                f"fraction range [min, max] with 0 < min <= max <= 1, e.g. [0.08, 1.0]"
            )
        if self.crop_padding:
            raise ValueError(
                "train.augment.random_resized_crop replaces the padded crop; set "
                "train.augment.crop_padding: 0 with it"
            )
        return self


class TrainConfig(_Section):
    """Training settings shared by every phase. ``precision`` defaults to fp32: the same
    numerics whether or not the CPU has bf16 matrix units, so a clean clone's ``dvc repro``
    rebuilds the committed architecture (bf16 rounds differently and steers the search
    elsewhere). ``auto`` picks bf16 autocast where it was measured faster, CUDA GPUs and
    CPUs with AMX, and fp32 elsewhere; ``memory_format: auto`` is channels_last where
    training runs in bf16. Choices are words, not on/off (YAML reads on/off as booleans)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(64, ge=1, le=65536)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: AugmentConfig = AugmentConfig()
    precision: Literal["auto", "bf16", "fp32"] = "fp32"
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    compile: bool = False
    gpu_data_max_mb: int = Field(4096, ge=0, le=1_048_576)
    workers: int = Field(2, ge=0, le=256)


class SlimmingConfig(_Section):
    sparsity: float = Field(1e-4, ge=0, le=1)


class JstConfig(_Section):
    """Knobs of joint search-and-training (docs/method.md). Epochs come from search.epochs:
    ``warmup_epochs`` of dense training, the rest spread over the iterations, decaying
    coarse -> fine by ``epoch_decay`` (E_K / E_1); one cosine takes the learning rate from
    search.lr to search.lr * ``lr_decay`` over all of them, warm-up included. The last
    ``freeze_fraction`` of the iterations train one fixed architecture, continuously."""

    iterations: int = Field(12, ge=1, le=100000)
    warmup_epochs: float = Field(2.0, ge=0, le=10000)
    epoch_decay: float = Field(0.5, gt=0, le=1)
    lr_decay: float = Field(0.1, gt=0, le=1)
    anneal_fraction: float = Field(0.5, ge=0, le=1)
    freeze_fraction: float = Field(0.5, ge=0, lt=1)
    candidates: int = Field(4, ge=1, le=1024)
    perturbation: bool = False
    sigma_start: float = Field(1.0, ge=0, le=100)
    sigma_min: float = Field(0.05, ge=0, le=100)
    thresholding: bool = True
    action_steps: list[Annotated[float, Field(ge=-100, le=100)]] = Field(
        default_factory=lambda: [-2.0, -1.0, 0.0, 1.0, 2.0], min_length=2, max_length=101
    )
    delta: float = Field(0.05, gt=0, le=1)
    tau_min: float = Field(0.05, gt=0, le=1)
    policy_lr: float = Field(0.01, gt=0, le=10)
    budget_penalty: float = Field(2.0, ge=0, le=1000)
    # Gates are learned with the weights (Adam); 0 leaves them at 1 (alpha = 0).
    alpha_lr: float = Field(0.01, ge=0, le=100)
    alpha_max: float = Field(3.0, gt=0, le=50)  # |alpha| bound: gates stay trainable
    polarisation: float = Field(0.01, ge=0, le=100)
    score_batches: int = Field(2, ge=1, le=100000)
    recalibrate_batches: int = Field(2, ge=0, le=100000)

    @field_validator("sigma_min")
    @classmethod
    def _sigma_min_below_start(cls, v: float, info) -> float:
        start = info.data.get("sigma_start")
        if start is not None and v > start:
            raise ValueError(f"must not exceed search.jst.sigma_start ({start})")
        return v


class SearchConfig(_Section):
    method: str = "jst"  # a name in pipeline.methods' registry, checked where it is resolved
    target_flops: float = 0.5
    # A latency budget replaces the FLOPs budget when set: at most this fraction of the
    # dense model's latency, measured on the deployment runtime (pipeline.latency).
    target_latency: float | None = None
    latency_batch: int = Field(64, ge=1, le=65536)
    # The training epochs the search stage spends, whatever the method does with them.
    epochs: int = Field(12, ge=0, le=10000)
    lr: float = Field(0.1, gt=0, le=10)
    k_min: int = Field(1, ge=1, le=4096)
    # auto: the deployment hardware's channel block (pipeline.hardware), resolved by
    # SearchContext; the value used is in metrics/search.json.
    round_to: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = 8
    prune_residual: bool = True
    slimming: SlimmingConfig = SlimmingConfig()
    jst: JstConfig = JstConfig()

    @field_validator("target_flops")
    @classmethod
    def _budget_in_range(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError("must be in (0, 1] (the fraction of the dense FLOPs to keep)")
        return v

    @field_validator("target_latency")
    @classmethod
    def _latency_budget_in_range(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v <= 1:
            raise ValueError(
                "must be in (0, 1] (the fraction of the dense model's latency to keep) or null"
            )
        return v

    @model_validator(mode="after")
    def _jst_has_iteration_epochs(self) -> SearchConfig:
        if self.method == "jst" and self.epochs <= self.jst.warmup_epochs:
            raise ValueError(
                f"search.epochs ({self.epochs}) must exceed search.jst.warmup_epochs "
                f"({self.jst.warmup_epochs}): JST spreads the epochs after its warm-up over "
                "its iterations; raise search.epochs or lower the warm-up"
            )
        return self


class FinetuneConfig(_Section):
    epochs: int = Field(10, ge=0, le=10000)
    lr: float = Field(0.02, gt=0, le=10)


class ExportConfig(_Section):
    opset: int = Field(18, ge=13, le=23)
    tolerance: float = Field(1e-4, gt=0, le=1)
    # image: the ONNX model takes uint8 N x H x W x C images as decoded and normalizes them
    # itself; tensor: it takes float32 N x C x H x W, already normalized (pipeline.export).
    input: Literal["image", "tensor"] = "image"
    # int8: the deployed model.onnx is ONNX Runtime's static int8 quantization (QDQ)
    # of the fp32 export, refused if its validation top-1 drops by more than int8_max_drop.
    quantize: Literal["none", "int8"] = "none"
    int8_max_drop: float = Field(0.01, ge=0, le=1)
    calibration_images: int = Field(256, ge=1, le=1_000_000)


class EvaluateConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_sizes: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [1, 64], min_length=1, max_length=64
    )
    warmup: int = Field(10, ge=0, le=100000)
    repeats: int = Field(50, ge=1, le=1000000)
    threads: int | None = Field(None, ge=1, le=1024)


class TrackingConfig(_Section):
    experiment: str = Field("jst-pipeline", min_length=1)
    registered_model: str = Field("compact-cnn", min_length=1)
    alias: str = Field("newest", min_length=1)

    @field_validator("alias")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v.lower() == "latest":
            raise ValueError("'latest' is reserved by MLflow; use another alias, e.g. 'newest'")
        return v


class PipelineConfig(_Section):
    seed: int = Field(0, ge=0, lt=2**31)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    search: SearchConfig = SearchConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    export: ExportConfig = ExportConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()


def parse_config(raw: Any, source: str = "params.yaml") -> PipelineConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level.")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def load_config(path: Path | str = "params.yaml") -> PipelineConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found; run from the repository root.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err}); save it as UTF-8.") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err}).") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_config(raw, str(path))


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters:"]
    for e in err.errors():
        field = ".".join(_key_name(p) for p in e["loc"]) or "(top level)"
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("extra_forbidden", "invalid_key"):  # invalid_key: not text
            message = "unknown parameter; remove it or check its spelling"
        elif e["type"] == "model_type":
            message = "expected a section (a mapping of parameter: value)"
        elif e["type"] == "int_parsing_size":
            message = "expected an integer of sensible size; this number is far too large"
        lines.append(f"  {field}: {message} (got {_short_repr(e.get('input'))})")
    return "\n".join(lines)


def _key_name(key: Any) -> str:
    """A key as written, or quoted where it is empty, padded or has control characters."""
    plain = isinstance(key, int) or (isinstance(key, str) and key.isprintable() and key.strip())
    return str(key) if plain and str(key) == str(key).strip() else repr(key)


def _short_repr(value: Any, limit: int = 80) -> str:
    # reprlib stops after a few items and levels: YAML aliases can nest a list 9**9 deep.
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring = 3, 4, 4, 60


def _mentions(annotation: Any, types: tuple[type, ...]) -> bool:
    """Whether a field's type is, or contains (list[...], X | None), one of ``types``."""
    return annotation in types or any(_mentions(a, types) for a in get_args(annotation))
