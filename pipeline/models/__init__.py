"""Model families. Importing this package registers every model."""

from pipeline.models import resnet_cifar, resnet_imagenet, vgg  # noqa: F401  (registration)
from pipeline.models.registry import (
    available_models,
    create_model,
    model_factory,
    register_model,
)

__all__ = ["available_models", "create_model", "model_factory", "register_model"]
