import sys

from jaxseed.ablate.cli import main

sys.exit(main())
