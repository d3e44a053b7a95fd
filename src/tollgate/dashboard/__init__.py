"""The dashboard: server-rendered pages at `/dashboard` (see `routes.py`)."""

from tollgate.dashboard.routes import Dashboard

__all__ = ["Dashboard"]
