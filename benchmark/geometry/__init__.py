"""One geometry for every loader, adapter and protocol, in three modules.

Why one place: a localization number is only meaningful if the heatmap and the ground truth sit
in the same frame. Loaders keep ground truth in original pixels; adapters declare the frame their
similarity grid covers (an *input geometry* spec, ``frames``); protocols move both into the frame
they score in: maps with ``frames``, ground truth with ``rasterize``, and the official AFLoc
evaluation's own box mapping and margin with ``afloc``. Nobody else resizes.
"""
