"""python -m bitswarm.simulations run SCENARIO.toml --out DIR (also `bitswarm simulate run`)."""
import sys

from .cli import main

sys.exit(main())
