"""``python -m rematpass show|diff|frontier DIR``: see rematpass/cli.py."""

from .inspect.cli import main

raise SystemExit(main())
