"""afloc-bench harness: registry, loaders, geometry, metrics, protocols, runner, CLI."""

__version__ = "0.1.0"
