"""Dataset loaders: one folder per benchmark dataset (``<name>/loader.py``), listed in ``benchmark/manifest.yaml``.

Every loader reads the dataset's official files as distributed (``datasets/<name>/README.md`` says
where to get them and the expected layout) and yields ``benchmark.sample.Sample`` records with the
ground truth in original pixel coordinates. Cards, split id lists and prompt sets are data in the
``datasets/`` folder, shipped inside the package (``benchmark.resources``).
"""
