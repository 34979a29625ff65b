"""python -m csd_fast.cli ...: the same as the csd-fast script (torchrun uses this form)."""
import sys

from . import main

sys.exit(main())
