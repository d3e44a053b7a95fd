"""``python -m tollgate.sim --host HOST --port PORT``."""

from tollgate.sim.cli import main

raise SystemExit(main())
