"""spark-submit jobs/ingest.py --source DIR|mnist|digits|photos --output OUT [options]"""
import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
