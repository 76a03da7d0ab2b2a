"""The JSON API, mounted at ``/api/v1``."""

from farm.api.views import api_blueprint

__all__ = ["api_blueprint"]
