"""``python -m rematpass show|diff|frontier DIR``: see rematpass/cli.py."""

from .cli import main

raise SystemExit(main())
