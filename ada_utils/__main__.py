"""``python -m ada_utils`` runs the ``ada`` command line."""

import sys

from ada_utils.cli import main

sys.exit(main())
