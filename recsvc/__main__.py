"""``python -m recsvc`` runs the command line."""

from recsvc.cli import main

raise SystemExit(main())
