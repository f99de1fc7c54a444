import sys

from jouletune.cli import main

sys.exit(main())
