"""spark-submit jobs/export.py --input IMAGES --output OUT|s3://bucket/prefix [options]"""
import sys

from pipeline.cli import submit_main

if __name__ == "__main__":
    sys.exit(submit_main(["export", *sys.argv[1:]]))
