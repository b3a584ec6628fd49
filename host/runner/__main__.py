import sys

from host.runner.run import main

sys.exit(main())
