"""The ``afloc-bench`` command line. One module per subcommand (see ``main.COMMANDS``).

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Heavy imports happen inside ``run``.
"""

import argparse


def n_boot_arg(text: str) -> int:
    """``--n-boot``: a whole number of bootstrap replicates, 0 for point estimates only."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0 (0 = points only), got {text!r}")
    return n
