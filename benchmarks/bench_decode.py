"""Decode speed of dense vs sparse spike-driven decoding (issue 6 bar: batch 1, 130m shape, CPU, float32,
same threads: spiking tokens/s / dense tokens/s >= 1.5 at the distilled student's firing rate).

    python benchmarks/bench_decode.py --shape 130m --num-threads 1 --rates 0.05,0.1,0.2,0.4,0.6,0.8 --batch-sizes 1,8

Same options as `spikingmamba bench-decode` (this script calls it); see its --help.
"""

from __future__ import annotations

import sys

from spikingmamba.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench-decode", *sys.argv[1:]]))
