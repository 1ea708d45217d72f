"""``python -m tl_core.labs run LAB_ID`` (what launch_lab starts) or ``... local CONFIG.json``."""
import sys

from tl_core.labs.runner import main

sys.exit(main())
