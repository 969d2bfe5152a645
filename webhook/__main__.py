"""`python -m webhook` runs the same command line as `backend-injector`."""

from webhook.cli import main

raise SystemExit(main())
