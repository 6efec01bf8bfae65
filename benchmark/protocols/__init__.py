"""Named, versioned recipes from native similarity grids to numbers.

Every top-level module here is imported at registry load; keep them free of torch imports.
"""

from benchmark.protocols.base import Protocol, register_protocol, resolve_protocol

__all__ = ["Protocol", "register_protocol", "resolve_protocol"]
