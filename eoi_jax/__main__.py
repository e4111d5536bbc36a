import sys

from eoi_jax.training.cli import main

sys.exit(main())
