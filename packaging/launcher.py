"""What the frozen app runs: the same entry point as the `medsynth` console script."""

import sys

from medsynth import main

if __name__ == "__main__":
    sys.exit(main())
