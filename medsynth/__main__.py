import sys

from medsynth import main

sys.exit(main())
