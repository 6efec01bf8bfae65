"""The ``afloc-bench`` command line. One module per subcommand (see ``main.COMMANDS``).

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Heavy imports happen inside ``run``.
"""
