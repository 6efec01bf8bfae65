"""The AFLoc model: encoders, multi-level losses, trainer, inference engine, checkpoint import.

Modules: ``config`` (architecture presets), ``backbones`` (ResNet trunks), ``tokenizer`` and
``aggregate`` (words / sentences / report from BERT states), ``losses``, ``model``, ``text``
(the official prompt and report cleaning), ``inference`` (preprocessing, grids, zero-shot),
``adapter`` (the ``afloc`` model of the benchmark), ``checkpoint`` (official ``.ckpt`` import and
the project's safetensors format), ``data`` and ``train`` (``afloc-bench train afloc``), ``vocab``
and ``demo`` (the demo tokenizer and checkpoint), ``perf`` (``python -m afloc.perf``).
"""
