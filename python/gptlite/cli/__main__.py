"""python -m gptlite: the same as the gptlite command."""
import sys

from gptlite.cli import main

sys.exit(main())
