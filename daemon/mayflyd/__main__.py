import sys

from mayflyd.cli.main import main

sys.exit(main())
