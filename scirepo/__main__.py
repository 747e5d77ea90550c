"""`python -m scirepo`: the same as the `scirepo` command."""

import sys

from scirepo.cli import main

sys.exit(main())
