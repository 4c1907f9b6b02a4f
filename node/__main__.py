import sys

from bitswarm.node.cli import main

sys.exit(main())
