"""spark-submit --jars $(python -m pipeline.jars) jobs/train_digits.py --input IMAGES --output OUT [options]"""
import sys

from pipeline.cli import submit_main

if __name__ == "__main__":
    sys.exit(submit_main(["train_digits", *sys.argv[1:]]))
