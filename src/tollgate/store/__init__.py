"""The store: the only package that touches the database.

`Store` owns the engines; the repository modules (`accounts`, `tokens`, `gateways`, `ledger`) are
small async functions over it. Callers never see SQLAlchemy.
"""

from tollgate.store.engine import Store
from tollgate.store.models import Account, ApiToken, GatewayRecord, LedgerEntry, Page

__all__ = ["Account", "ApiToken", "GatewayRecord", "LedgerEntry", "Page", "Store"]
