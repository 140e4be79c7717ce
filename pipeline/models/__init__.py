"""Model families. Importing this package registers every model."""

from pipeline.models import resnet_cifar, resnet_imagenet, vgg  # noqa: F401  (registration)
from pipeline.models.registry import (
    available_models,
    build_on_meta,
    check_model_runs,
    create_model,
    is_hand_written,
    model_factory,
    register_model,
)

__all__ = [
    "available_models",
    "build_on_meta",
    "check_model_runs",
    "create_model",
    "is_hand_written",
    "model_factory",
    "register_model",
]
