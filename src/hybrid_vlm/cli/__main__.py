"""`python -m hybrid_vlm.cli ...`: the same as `hybrid-vlm ...`."""

import sys

from .main import main

sys.exit(main())
