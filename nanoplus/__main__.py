import sys

from nanoplus.cli import main

sys.exit(main())
