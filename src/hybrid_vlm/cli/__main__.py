"""`python -m hybrid_vlm.cli ...`: the same as `hybrid-vlm ...`."""

import sys

from .parser import main

sys.exit(main())
