"""spark-submit --jars $(python -m pipeline.jars) jobs/predict_digits.py --input IMAGES --output OUT [options]"""
import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict_digits", *sys.argv[1:]]))
