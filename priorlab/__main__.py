"""`python -m priorlab` = the `priorlab` command."""

import sys

from priorlab.cli import main

sys.exit(main())
