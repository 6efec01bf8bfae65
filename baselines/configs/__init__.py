"""Training configs of the baseline objectives (``<task>-<spec>.yaml``)."""
