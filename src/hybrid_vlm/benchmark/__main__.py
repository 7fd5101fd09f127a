"""`python -m hybrid_vlm.benchmark ...`: the same as `hybrid-vlm bench ...`."""

from .cli import main

raise SystemExit(main())
