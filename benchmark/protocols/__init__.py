"""Named, versioned recipes from native similarity grids to numbers (listed in ``benchmark/manifest.yaml``)."""

from benchmark.protocols.base import Protocol, resolve_protocol

__all__ = ["Protocol", "resolve_protocol"]
