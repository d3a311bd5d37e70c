"""``python -m hashsync``: the command-line interface."""

from hashsync.cli import main

raise SystemExit(main())
