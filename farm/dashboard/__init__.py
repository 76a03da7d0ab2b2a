"""The dashboard: server-rendered pages at ``/``."""

from farm.dashboard.views import dashboard_blueprint

__all__ = ["dashboard_blueprint"]
