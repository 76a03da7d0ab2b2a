"""The API blueprint with every route registered (see :mod:`farm.api.routes`)."""

from farm.api import routes  # noqa: F401  - importing the routes registers them
from farm.api.registry import api, api_blueprint

__all__ = ["api", "api_blueprint"]
