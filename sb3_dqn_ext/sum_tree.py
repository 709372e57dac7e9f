"""Sum tree (with a companion minimum) for proportional prioritized experience replay, compiled with numba."""

import math

import numba
import numpy as np


@numba.njit(cache=True)
def _update_kernel(
    sums: np.ndarray, mins: np.ndarray, offsets: np.ndarray, branching: int, indices: np.ndarray, values: np.ndarray
) -> None:
    """
    Write ``sums[indices] = values`` (last occurrence wins) and recompute the ancestors of those leaves.

    Layout: ``sums`` holds every level, leaves first; level ``l`` starts at ``offsets[l]``, the root is ``sums[-1]``,
    and the children of node ``j`` of level ``l + 1`` are ``sums[offsets[l] + j * branching + c]``, ``c < branching``.
    ``mins[p - offsets[1]]`` is the minimum over the positive leaves below internal node ``sums[p]`` (+inf if none).
    Each changed node is recomputed from its children, level by level (never by adding a delta).
    """
    nodes = indices.copy()
    for i in range(indices.size):
        sums[indices[i]] = values[i] + 0.0  # + 0.0 turns -0.0 into 0.0
    for level in range(1, offsets.size - 1):
        previous = -1
        for i in range(nodes.size):
            node = nodes[i] // branching
            nodes[i] = node
            if node == previous:  # siblings next to each other (a sorted batch) are recomputed once
                continue
            previous = node
            first_child = offsets[level - 1] + node * branching
            total, minimum = 0.0, math.inf
            for child in range(first_child, first_child + branching):
                total += sums[child]
                if level > 1:
                    minimum = min(minimum, mins[child - offsets[1]])
                else:  # leaves: zero leaves count as +inf
                    minimum = min(minimum, sums[child] if sums[child] > 0.0 else math.inf)
            sums[offsets[level] + node] = total
            mins[offsets[level] + node - offsets[1]] = minimum


@numba.njit(cache=True)
def _query_kernel(
    sums: np.ndarray, offsets: np.ndarray, branching: int, prefix_sums: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """
    For each ``u`` in ``prefix_sums``, descend from the root to the leaf whose cumulative range holds ``u``.

    Layout: as in ``_update_kernel``. At each node take the first child whose running sum exceeds ``u``, and
    subtract the sum of its left siblings; if none does (``u`` reaches the node's sum, given or by rounding), take
    the last positive child at this level and every level below. Zero children are never taken (total 0: leaf 0).
    """
    # Level by level for the whole batch: the descents are independent, so their cache misses overlap
    u = prefix_sums.copy()
    nodes = np.zeros(u.size, dtype=np.intp)  # index of each current node within its level, starting at the root
    for level in range(offsets.size - 3, -1, -1):
        for i in range(u.size):
            first_child = offsets[level] + nodes[i] * branching
            running, chosen = 0.0, first_child
            for child in range(first_child, first_child + branching):
                if u[i] < running + sums[child]:  # never true for a zero child: u >= running there
                    chosen = child
                    break
                running += sums[child]
            else:  # overflow: take the last positive child (if any), and below it the last positive child
                for child in range(first_child + branching - 1, first_child - 1, -1):
                    if sums[child] > 0.0:
                        chosen = child
                        break
                u[i] = math.inf
            u[i] -= running
            nodes[i] = chosen - offsets[level]
    return nodes, sums[nodes]


class SumTree:
    """
    Sum tree over ``capacity`` non-negative leaves, with the minimum of the positive leaves,
    for proportional prioritized experience replay (Schaul et al. 2016, https://arxiv.org/abs/1511.05952).

    A ``branching``-ary tree in one flat float64 array, leaves first, children of a node contiguous, each level
    padded with zeros to a multiple of ``branching``; a parallel array holds each internal node's minimum positive
    leaf. Updates and queries are numba kernels (compiled on first call, cached on disk); so are the prioritized
    buffers' sampling and priority updates (:mod:`sb3_dqn_ext.priorities`).

    Default ``branching=16`` (``python benchmarks/sum_tree_layout.py``: a sample and a priority update of 32 leaves on
    1e6, one core of a shared 2-vCPU VM): 8.6-8.9 us; 8 was 3% faster, 4 4-10% slower, 32 11-12% slower, 2 48-50%
    slower (one cache miss per level); at batch 256 alike (8: 3-4% faster, 2: 63-66% slower).

    :param capacity: Number of leaves
    :param branching: Number of children of each internal node (at least 2)
    """

    capacity: int
    branching: int

    def __init__(self, capacity: int, branching: int = 16) -> None:
        if not isinstance(capacity, (int, np.integer)) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        if not isinstance(branching, (int, np.integer)) or isinstance(branching, bool) or branching < 2:
            raise ValueError(f"branching must be an integer >= 2, got {branching!r}")
        self.capacity = int(capacity)
        self.branching = int(branching)
        # Level sizes, leaves first: each level holds branching children per node of the level above, then the root
        sizes, n_nodes = [0], self.capacity
        while n_nodes > 1 or len(sizes) == 1:
            n_nodes = -(-n_nodes // self.branching)
            sizes.append(n_nodes * self.branching)
        self._offsets = np.cumsum([*sizes, 1], dtype=np.intp)
        self._sums = np.zeros(self._offsets[-1])
        self._mins = np.full(self._offsets[-1] - self._offsets[1], math.inf)

    @property
    def total(self) -> float:
        """Sum of all leaves."""
        return float(self._sums[-1])

    @property
    def min(self) -> float:
        """Minimum over the leaves whose value is positive, ``math.inf`` when there are none."""
        return float(self._mins[-1])

    def _check_indices(self, indices: np.ndarray) -> np.ndarray:
        """Check that ``indices`` (any shape) are integers in ``[0, capacity)``; return them as flat ``intp``."""
        flat = np.asarray(indices).reshape(-1)
        if flat.dtype.kind not in "iu" and flat.size > 0:
            raise IndexError(f"leaf indices must be integers, got {flat[0]} (dtype {flat.dtype})")
        if flat.size > 0 and (flat.min() < 0 or flat.max() >= self.capacity):
            bad = flat[(flat < 0) | (flat >= self.capacity)][0]
            raise IndexError(f"leaf index {bad} is out of range [0, {self.capacity})")
        return flat.astype(np.intp)

    def update(self, indices: np.ndarray, values: np.ndarray | float) -> None:
        """
        Set leaves ``indices`` to ``values`` (duplicates: the last wins, as ``leaves[indices] = values`` does) and
        recompute their ancestors. Nothing is written if any input is bad.

        :param indices: Leaf indices in ``[0, capacity)``, any integer dtype and shape
        :param values: Finite values ``>= 0``, same shape as ``indices`` or a scalar
        """
        flat_indices = self._check_indices(indices)
        values = np.asarray(values, dtype=np.float64)
        if values.ndim > 0 and values.shape != np.shape(indices):
            raise ValueError(f"values shape {values.shape} does not match indices shape {np.shape(indices)}")
        # A fresh writable copy: a read-only or strided array would compile another version of the kernel
        flat_values = np.full(flat_indices.size, values) if values.ndim == 0 else values.reshape(-1).copy()
        valid = np.isfinite(flat_values) & (flat_values >= 0)
        if not valid.all():
            raise ValueError(f"priority values must be finite and >= 0, got {flat_values[~valid][0]}")
        self._update(flat_indices, flat_values)

    def _update(self, indices: np.ndarray, values: np.ndarray) -> None:
        """``update`` without checks: flat ``intp`` indices in ``[0, capacity)``, flat float64 values, finite and >= 0."""
        _update_kernel(self._sums, self._mins, self._offsets, self.branching, indices, values)

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Leaf values (float64) at ``indices`` (in ``[0, capacity)``, any integer dtype), same shape as ``indices``."""
        return self._sums[self._check_indices(indices)].reshape(np.shape(indices))

    __getitem__ = get

    def query(self, prefix_sums: np.ndarray) -> np.ndarray:
        """
        Find, for each prefix sum ``u``, the leaf ``i`` with ``cumsum[i - 1] <= u < cumsum[i]``.

        This is ``np.searchsorted(np.cumsum(leaves), u, side="right")`` in ``O(log capacity)``, except that a
        leaf of value 0 is never returned: a ``u`` that reaches the sum of a node (``u >= total``, or rounding)
        gets the last positive leaf of that node.

        :param prefix_sums: Values ``u >= 0``, typically drawn in ``[0, total)``, any shape
        :return: The leaf indices (int64), same shape as ``prefix_sums``
        """
        u = np.asarray(prefix_sums, dtype=np.float64)
        if not self.total > 0:
            raise ValueError("cannot query a sum tree whose total is 0 (no positive leaf to sample)")
        flat = u.reshape(-1).copy()  # writable and contiguous: the kernel is compiled for that type only
        if not (flat >= 0).all():  # NaN fails too
            raise ValueError(f"prefix sums must be >= 0 and not NaN, got {flat[~(flat >= 0)][0]}")
        leaves, _ = _query_kernel(self._sums, self._offsets, self.branching, flat)
        return leaves.astype(np.int64).reshape(u.shape)
