"""``python -m hashsync.hub [ROOT] [--host H] [--port P] [--no-auth]``: as ``hashsync serve``."""

import sys

from hashsync.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
