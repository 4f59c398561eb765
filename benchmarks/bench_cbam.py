"""Benchmark command: `python benchmarks/bench_cbam.py [cbam bench flags]` (same as `cbam bench`)."""
import sys

from cbam.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
