"""`python -m monitor` is the `specwatch` command."""

import sys

from monitor.cli import main

sys.exit(main())
