"""Upstream providers: the registry of slugs, and one adapter per wire format."""
