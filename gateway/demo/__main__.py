"""``python -m gateway.demo [options]``: the same as ``surge demo [options]``."""

import sys

from gateway.demo.cli import main

sys.exit(main(["demo", *sys.argv[1:]]))
