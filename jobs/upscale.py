"""spark-submit jobs/upscale.py --input ... --output ... [options]   (see --help)"""
import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["upscale", *sys.argv[1:]]))
