import sys

from videoadapt.cli import main


sys.exit(main())
