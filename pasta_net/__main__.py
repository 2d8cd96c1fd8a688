"""``python -m pasta_net`` runs the command line interface."""

from pasta_net.cli import main

raise SystemExit(main())
