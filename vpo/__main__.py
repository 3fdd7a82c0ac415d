import sys

from vpo.cli import main

sys.exit(main())
