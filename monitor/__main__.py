"""`python -m monitor` is the `specwatch` command."""

import sys

from monitor.service.cli import main

sys.exit(main())
