"""Spread over seeds of the learned quality that tests/test_pipeline.py bounds: its bound must sit far outside it.

.venv/bin/python benchmarks/learned_spread.py --seeds 0,1,2,3,4 [--variation 0.25] [--epochs 10]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_pipeline import CHANCE, fine_tune_and_score  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--seeds", default="0,1,2,3,4")
parser.add_argument("--variation", type=float, default=0.25)
parser.add_argument("--epochs", type=int, default=10)
args = parser.parse_args()
print(f"chance MAP@5 {CHANCE:.3f}")
for seed in [int(s) for s in args.seeds.split(",")]:
    start = time.time()
    with tempfile.TemporaryDirectory() as folder:
        map5, ratio = fine_tune_and_score(Path(folder), seed, args.variation, args.epochs)
    print(
        f"seed {seed}  variation {args.variation}  MAP@5 {map5:.3f}  loss last/first {ratio:.3f}  ({time.time() - start:.0f} s)",
        flush=True,
    )
