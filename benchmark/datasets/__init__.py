"""Dataset loaders: one module per benchmark dataset, each registering itself with ``@register_dataset``.

Every loader reads the dataset's official files as distributed (``datasets/<name>/README.md`` says
where to get them and the expected layout) and yields ``benchmark.sample.Sample`` records with the
ground truth in original pixel coordinates. Cards, split id lists and prompt sets are data under the
repository's ``datasets/`` folder. Modules starting with ``_`` are helpers, not plugins.
"""
