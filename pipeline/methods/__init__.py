"""Search methods. Importing this package registers every method."""

from pipeline.methods import baselines, jst  # noqa: F401  (registration)
from pipeline.methods.base import (
    SearchContext,
    SearchResult,
    available_methods,
    get_method,
    register_method,
)

__all__ = ["SearchContext", "SearchResult", "available_methods", "get_method", "register_method"]
