import sys

from offloader.cli import main

sys.exit(main())
