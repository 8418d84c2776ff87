import sys

from kvmap.cli import main

sys.exit(main())
