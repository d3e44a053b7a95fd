"""HTTP surfaces: the data plane, the management API, the operator admin API."""
