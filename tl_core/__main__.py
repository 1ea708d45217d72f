import sys

from tl_core.cli import main

sys.exit(main())
