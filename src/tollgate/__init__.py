"""tollgate: a self-hosted AI gateway with Unified Billing.

Importing tollgate does no work: `create_app(settings)` builds everything.
"""

from tollgate.settings import Settings, load_settings

__version__ = "0.1.0"

__all__ = ["Settings", "__version__", "create_app", "load_settings"]


def __getattr__(name: str) -> object:
    # create_app pulls in the whole server stack; import it only when asked for.
    if name == "create_app":
        from tollgate.app import create_app

        return create_app
    raise AttributeError(name)
