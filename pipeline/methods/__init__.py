"""Search methods. Importing this package imports every module in it, so a method is one
new module whose ``@register_method`` registers it; nothing here names a method."""

from pipeline.methods.base import (
    SearchContext,
    SearchResult,
    available_methods,
    get_method,
    import_modules,
    register_method,
)

import_modules(__path__, __name__)

__all__ = ["SearchContext", "SearchResult", "available_methods", "get_method", "register_method"]
