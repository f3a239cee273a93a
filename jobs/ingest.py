"""spark-submit jobs/ingest.py --source DIR|mnist|digits|photos --output OUT [options]"""
import sys

from pipeline.cli import submit_main

if __name__ == "__main__":
    sys.exit(submit_main(["ingest", *sys.argv[1:]]))
