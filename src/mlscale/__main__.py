"""`python -m mlscale` is the same as the `mlscale` command."""
import sys

from mlscale.cli import main

sys.exit(main())
