"""spark-submit jobs/upscale.py --input ... --output ... [options]   (see --help)"""
import sys

from pipeline.cli import submit_main

if __name__ == "__main__":
    sys.exit(submit_main(["upscale", *sys.argv[1:]]))
