import sys

from edgecaffe.cli import main

sys.exit(main())
