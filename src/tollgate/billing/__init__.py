"""Unified Billing: the price catalog (``catalog``), and in time the ledger, limits and top-ups."""

from tollgate.billing.catalog import Catalog, CatalogError, ModelPrice, load_catalog

__all__ = ["Catalog", "CatalogError", "ModelPrice", "load_catalog"]
