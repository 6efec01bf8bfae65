"""The AFLoc model: encoders, multi-level losses, inference engine, official-checkpoint import, its training task.

Modules: ``config`` (architecture presets), ``tokenizer`` and ``aggregate`` (words / sentences /
report from BERT states), ``losses``, ``model``, ``text`` (the official prompt cleaning),
``inference`` (preprocessing, grids, zero-shot), ``adapter`` (the ``afloc`` and ``afloc_untrained``
models of the benchmark), ``checkpoint`` (official ``.ckpt`` import and the project's safetensors
format), ``task`` (the objective on the shared trainer, ``benchmark.training``), ``diagnostics`` and
``perf`` (``python -m afloc.perf``). The entries of the benchmark's registry are in ``manifest.yaml``.
"""
