"""spark-submit jobs/train_gan.py --input ... --output ... [options]   (see --help)"""
import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["train_gan", *sys.argv[1:]]))
