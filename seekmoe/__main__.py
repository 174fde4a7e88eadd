"""`python -m seekmoe`: the same command as the `seekmoe` console script."""

import sys

from seekmoe.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
