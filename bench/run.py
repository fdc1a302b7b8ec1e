"""`python bench/run.py [--tables]`: the same as `python -m bench [--tables]` from the repository root, which
make bench runs; the benchmark is the bench package (its parts: bench/__init__.py)."""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository, not bench/, as with -m
    runpy.run_module("bench", run_name="__main__", alter_sys=True)
