"""``python -m rematpass show|diff|frontier|calibrate``: see rematpass/inspect/cli.py."""

from .inspect.cli import main

raise SystemExit(main())
