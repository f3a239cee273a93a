import sys

from pipeline.cli import submit_main

sys.exit(submit_main())
