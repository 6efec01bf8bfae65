"""Model adapters other than AFLoc: sanity floors, re-implemented baselines, saliency and CLIP models.

Every top-level module of this package is imported when the registry is first used, so a
module here must stay light: no torch (or other heavy) import at module level. Put model
code in a submodule and import it inside ``Adapter.load``.
"""
