import sys

from wirestream.cli import main

sys.exit(main())
