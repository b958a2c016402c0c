import sys

from mayflyd.cli import main

sys.exit(main())
