import sys

from mcmfh.cli import main

sys.exit(main())
