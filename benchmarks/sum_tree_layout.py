"""
Sum-tree layout: one prioritized step on the tree alone (``priorities.sample`` of a batch, then ``priorities.set_priorities``
of the same leaves) for each branching factor, on 1e6 leaves of random priorities, in interleaved rounds
(:func:`benchmarks.common.interleaved_rounds`) against the default branching (16). One numba thread.

Usage (JSON in ``benchmarks/results/sum_tree_layout.json``)::

    python benchmarks/sum_tree_layout.py
"""

import os

os.environ.update(NUMBA_NUM_THREADS="1")

import argparse
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, interleaved_rounds, run_metadata, write_json
from sb3_dqn_ext import priorities
from sb3_dqn_ext.sum_tree import SumTree

DEFAULT_BRANCHING = 16


def make_step(tree: SumTree, batch_size: int, rng: np.random.Generator) -> Callable[[], None]:
    """Sample a batch (alpha 0.6, beta 0.4), then set the priorities of its leaves, cycling over 512 drawn batches."""
    draws = itertools.cycle([(rng.random(batch_size), np.abs(rng.standard_normal(batch_size))) for _ in range(512)])

    def step() -> None:
        uniforms, td_errors = next(draws)
        leaves, _ = priorities.sample(tree, uniforms, 0.4, False)
        priorities.set_priorities(tree, leaves, td_errors, 1e-6, 0.6)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=lambda x: int(float(x)), default=1_000_000)
    parser.add_argument("--branchings", nargs="+", type=int, default=[2, 4, 8, 16, 32])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 256])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    values = np.abs(rng.standard_normal(args.capacity)) ** 0.6
    trees = {branching: SumTree(args.capacity, branching) for branching in sorted({*args.branchings, DEFAULT_BRANCHING})}
    for tree in trees.values():
        tree.update(np.arange(args.capacity), values)
    results = []
    for batch_size in args.batch_sizes:
        steps = {str(branching): make_step(tree, batch_size, rng) for branching, tree in trees.items()}
        timed = interleaved_rounds(steps, args.rounds, reference=str(DEFAULT_BRANCHING))
        for name, row in timed.items():
            results.append({"branching": int(name), "batch_size": batch_size, **row})
            print(f"batch {batch_size}, branching {name}: {row['median_us']} us, {row['ratio']}x branching 16", flush=True)
    report = {**run_metadata(), "settings": {"capacity": args.capacity, "rounds": args.rounds}, "results": results}
    print("written:", write_json(report, "sum_tree_layout", args.results_dir))


if __name__ == "__main__":
    main()
