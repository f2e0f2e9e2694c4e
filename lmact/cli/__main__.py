"""`python -m lmact.cli`: the `lmact` command."""

import sys

from lmact.cli import main

sys.exit(main())
