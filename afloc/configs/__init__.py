"""Training configurations of ``afloc-bench train afloc`` (YAML; ``--config paper|demo|PATH``)."""
