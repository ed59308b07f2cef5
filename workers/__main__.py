import sys

from workers.entry import main

sys.exit(main())
