"""Vectorized sum tree (with a companion minimum) for proportional prioritized experience replay."""

import math
from typing import Any

import numpy as np

# Fastest for batches of 32 on 1e6 leaves, within 10% of the best for batches of 256 (timings in
# the ``SumTree`` docstring)
DEFAULT_BRANCHING = 32
# Widest root: the root's children are searched with one ``np.searchsorted`` and their prefix sums
# recomputed by one ``np.cumsum`` per update, which is cheaper than one more ``branching``-ary level
# as long as there are at most a few thousand of them
MAX_ROOT_CHILDREN = 4096
# Largest uint64: encodes "no positive leaf" in the min-structure (see ``SumTree.__init__``)
_NO_MIN = np.uint64(2**64 - 1)
# Bits of +inf: non-negative float64 below it (finite, not NaN, not -0.0) have smaller bits
_INF_BITS = np.float64(np.inf).view(np.uint64)
_ONE = np.uint64(1)
_INTP = np.dtype(np.intp)
# Deferred updates kept before their ancestors are recomputed anyway (bounds the pending list)
_MAX_PENDING = 1024


class SumTree:
    """
    Sum tree over ``capacity`` non-negative leaves, with the minimum of the positive leaves,
    for proportional prioritized experience replay (Schaul et al. 2016, https://arxiv.org/abs/1511.05952).

    A batch of queries or updates costs a few numpy calls per level, so the tree is wide and shallow:
    leaves are grouped in rows of ``branching``, each row being a node of level 1, whose nodes are
    grouped in rows of ``branching``, and so on until at most ``MAX_ROOT_CHILDREN`` nodes are left:
    these are the root's children. With the default ``branching=32``, the root of 1e6 leaves has 977
    children, with 31250 nodes below them, then the leaves. Each level is padded only to a multiple of
    ``branching``: with node values, prefix sums and minimums, memory is about
    ``capacity * (1 + 3 / (branching - 1))`` float64.

    A query descends from the root: among the children of the current node (a row), it takes the first
    whose cumulative sum exceeds ``u`` and subtracts the sum of its left siblings from ``u``. Internal
    rows store their prefix sums, so the only cumulative sum computed at query time is that of the
    leaf row; the root's prefix sums are searched with ``np.searchsorted``.

    Every internal node and prefix sum is recomputed from its children (never updated by adding a delta,
    which would accumulate float64 rounding error), and only the ancestors of the changed leaves are.

    Timings (median of ``query`` + ``update`` of a batch, on one core of a loaded 2-vCPU VM where
    ``a + a`` on 32 floats took 1.5 us, so about 100 such numpy calls), first layouts: with 1e6 leaves and a
    batch of 32, 145 us for ``branching=32`` (16: 149, 64: 175, 8: 174, 2: 345); 228 us for a plain 32-ary
    tree (``max_root_children=1``), 198 us when prefix sums are not stored either (the query cumulates the
    children of every node it visits). With a batch of 256: 580 us for ``branching=32`` (16: 532). The hot
    paths then lost most of their numpy calls (array methods and ufuncs instead of ``np.take``/``np.cumsum``,
    whose dispatch costs 2-3 us each; +inf closing each stored prefix row so that a level is one comparison
    and one ``argmin``; leaf values returned by the query; the minimum cached): 42-65 us for ``query`` and
    51-78 us for ``update`` at 1e6 / 32 (two runs of ``benchmarks/per_sampling.py``'s breakdown, each piece timed
    alone).

    ``update(..., defer=True)`` writes leaves at once and recomputes their ancestors at the next read or
    non-deferred update, in one batch: a replay buffer adds one transition per environment step, and with
    ``train_freq=256`` the 256 single-leaf updates between two training calls become one.

    :param capacity: Number of leaves
    :param branching: Number of children of each node below the root (at least 2)
    :param max_root_children: Most children of the root (at least 1); with 1, the tree is a plain
        ``branching``-ary tree
    """

    capacity: int
    branching: int

    def __init__(
        self, capacity: int, branching: int = DEFAULT_BRANCHING, *, max_root_children: int = MAX_ROOT_CHILDREN
    ) -> None:
        if int(capacity) != capacity or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        if int(branching) != branching or branching < 2:
            raise ValueError(f"branching must be an integer >= 2, got {branching!r}")
        if int(max_root_children) != max_root_children or max_root_children < 1:
            raise ValueError(f"max_root_children must be a positive integer, got {max_root_children!r}")
        self.capacity = int(capacity)
        self.branching = int(branching)
        # Level ``l`` has ``n_l`` nodes: ``n_0 = capacity`` leaves, ``n_{l+1} = ceil(n_l / k)``. Below
        # the root's children, level ``l`` is stored as ``n_{l+1}`` rows of ``k``: row ``r`` holds the
        # children of node ``r`` of level ``l + 1``.
        self._n_rows: list[int] = []
        n_nodes = self.capacity
        while True:
            n_nodes = -(-n_nodes // self.branching)
            self._n_rows.append(n_nodes)
            if n_nodes <= max_root_children:
                break
        n_root_children = self._n_rows[-1]
        # A query that overflows into a padding node (index >= n_rows) reads the last row instead
        # (``np.take(..., mode="clip")``), but its leaf index keeps growing and ends >= capacity; one
        # extra all-zero row of leaves makes that leaf read as 0, so the query is redone with the exact
        # rule (see ``query``).
        shapes = [(n_rows + (level == 0), self.branching) for level, n_rows in enumerate(self._n_rows)]
        # Node values: ``_values[l][r, c]`` is node ``r * k + c`` of level ``l``; the last entry holds
        # the root's children (1-D)
        self._values: list[np.ndarray] = [np.zeros(shape) for shape in shapes] + [np.zeros(n_root_children)]
        # Prefix sums of each row of internal nodes: ``_prefix[l][r, c] = sum(_values[l][r, :c])`` for
        # ``c < k``, and ``+inf`` in the last column, so that a query compares ``u`` with columns ``1..k``
        # and stops at the last child when ``u`` overflows the row (see ``_descend``); the row's sum is
        # its parent's value. They are not stored for the leaves (that would double the memory:
        # ``_prefix[0]`` is empty), so the leaf row is the only one whose cumulative sum is computed at
        # query time. An internal row's prefix sums and its parent's value come out of the same
        # ``np.add.accumulate``; a leaf row's sum (``ndarray.sum``, pairwise) may differ from its cumulative
        # sum by rounding, which the overflow rule absorbs.
        self._prefix: list[np.ndarray] = [np.zeros((0, self.branching + 1))]
        self._prefix += [np.zeros((n_rows, self.branching + 1)) for n_rows, _ in shapes[1:]]
        for level in self._prefix[1:]:
            level[:, -1] = np.inf
        self._prefix += [np.zeros(n_root_children + 1)]
        # Companion minimum of the internal nodes: the minimum over the positive leaves below each
        # node, none (``+inf``) when there is no positive leaf. Its leaf level is implicit, so it costs
        # no ``capacity``-sized array. For non-negative float64, the IEEE 754 bits read as ``uint64``
        # increase with the value, and ``bits - 1`` (modulo 2**64) sends 0.0 to the largest ``uint64``:
        # stored as ``bits - 1``, the minimum over the positive leaves is a plain ``uint64`` minimum
        # where zero leaves (unfilled) and "no positive leaf" (``_NO_MIN``) count as +inf.
        self._mins: list[np.ndarray] = [np.zeros((0, self.branching), dtype=np.uint64)]
        self._mins += [np.full(shape, _NO_MIN) for shape in shapes[1:]]
        self._mins += [np.full(n_root_children, _NO_MIN)]
        # Leaves written by ``update(..., defer=True)`` whose ancestors are not recomputed yet
        self._pending: list[np.ndarray] = []
        # ``min``, computed when first read after an update
        self._min: float | None = math.inf
        self._make_views()

    def _make_views(self) -> None:
        """Build the views used by the hot paths: flat (1-D) levels, to write a node given its index,
        and the root's prefix sums searched by a query."""
        self._values_flat = [level.reshape(-1) for level in self._values]
        self._mins_flat = [level.reshape(-1) for level in self._mins]
        self._root_bounds = self._prefix[-1][1:-1]
        # ``arange(batch_size) * width``, by (batch_size, width): start of each row of a gathered batch of rows
        self._row_starts: dict[tuple[int, int], np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Views would be pickled as independent copies: drop them and rebuild them on load
        self._flush()
        state = self.__dict__.copy()
        for name in ("_values_flat", "_mins_flat", "_root_bounds", "_row_starts"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # Trees pickled by earlier versions of this module store each row's sum in the last
        # column of the prefix sums, and had no pending list or cached minimum
        self.__dict__.setdefault("_pending", [])
        self.__dict__.setdefault("_min", None)
        for level in self._prefix[1:-1]:
            level[:, -1] = np.inf
        self._make_views()

    @property
    def total(self) -> float:
        """Sum of all leaves."""
        if self._pending:
            self._flush()
        return float(self._prefix[-1][-1])

    @property
    def min(self) -> float:
        """Minimum over the leaves whose value is positive, ``math.inf`` when there are none."""
        if self._pending:
            self._flush()
        if self._min is None:
            min_bits = self._mins[-1].min()
            self._min = math.inf if min_bits == _NO_MIN else float((min_bits + np.uint64(1)).view(np.float64))
        return self._min

    def _check_indices(self, indices: np.ndarray) -> np.ndarray:
        """
        Check that the indices are integers in ``[0, capacity)``.

        :param indices: Leaf indices, any shape
        :return: The indices as a flat ``intp`` array
        """
        indices = np.asarray(indices)
        dtype = indices.dtype
        flat = indices.reshape(-1)
        # Viewed as unsigned, negative indices are huge: one reduction checks both bounds
        if dtype is _INTP:  # the common case, tested first (builtin dtypes are singletons)
            unsigned = flat.view(np.uintp)
        elif dtype.kind == "u":
            unsigned = flat
        elif dtype.kind == "i":
            unsigned = flat.view(dtype.str.replace("i", "u"))
        else:
            raise IndexError(f"leaf indices must be integers, got dtype {dtype}")
        if flat.size > 0 and unsigned.max() >= self.capacity:
            bad = flat[(flat < 0) | (flat >= self.capacity)][0]
            raise IndexError(f"leaf index {int(bad)} is out of range [0, {self.capacity})")
        return flat if dtype is _INTP else flat.astype(np.intp)

    def update(self, indices: np.ndarray, values: np.ndarray | float, *, defer: bool = False) -> None:
        """
        Set leaves ``indices`` to ``values`` and recompute their ancestors.

        With duplicate indices the last occurrence wins (as in ``leaves[indices] = values``).

        :param indices: Leaf indices in ``[0, capacity)``, any shape
        :param values: Finite non-negative values, same shape as ``indices`` or a scalar
        :param defer: Write the leaves now but recompute their ancestors only when the tree is next read
            (``total``, ``min``, ``query``, pickling) or updated without ``defer``, together with that update's
            leaves: many small updates (one new transition per environment step) then cost one batched update.
            ``get`` reads the new values at once.
        """
        index_shape = np.shape(indices)
        flat_indices = self._check_indices(indices)
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 0:
            values = np.full(flat_indices.shape, values)
        elif values.shape != index_shape:
            raise ValueError(f"values shape {values.shape} does not match indices shape {index_shape}")
        else:
            values = values.reshape(-1)
        if flat_indices.size == 0:
            return
        # One reduction: negative values (sign bit), +inf and NaN have bits >= those of +inf
        if values.view(np.uint64).max() >= _INF_BITS:
            bad_values = values[~(np.isfinite(values) & (values >= 0))]
            if bad_values.size > 0:
                raise ValueError(f"priority values must be finite and >= 0, got {float(bad_values[0])}")
            # Only -0.0, which would break the min-structure's encoding: make it +0.0
            values = values + 0.0
        self._update(flat_indices, values, defer)

    def _update(self, indices: np.ndarray, values: np.ndarray, defer: bool = False) -> None:
        """
        ``update`` without input checks.

        :param indices: Flat ``intp`` leaf indices in ``[0, capacity)`` (``_check_indices``)
        :param values: Flat float64 values, finite, positive or +0.0 (not -0.0), one per index
        :param defer: See ``update``
        """
        self._values_flat[0][indices] = values
        if defer:
            self._pending.append(indices)
            if len(self._pending) >= _MAX_PENDING:
                self._flush()
        else:
            self._update_ancestors(indices)

    def _flush(self) -> None:
        """Recompute the ancestors of the leaves written by deferred updates."""
        if self._pending:
            self._update_ancestors(np.empty(0, dtype=np.intp))

    def _update_ancestors(self, indices: np.ndarray) -> None:
        """
        Recompute the ancestors of leaves ``indices`` and of the pending (deferred) leaves, from their children.

        Node ``i`` of level ``l`` is in row ``i // k``, which holds the children of node ``i // k`` of
        level ``l + 1``: each changed row is recomputed from its children, level by level. A row listed
        twice (siblings, duplicate indices) is recomputed twice to the same value, which is cheaper
        than ``np.unique``. Hot path: ufuncs and array methods only (``np.take``, ``np.cumsum`` and other
        ``np.*`` functions cost a few microseconds of dispatch each).

        :param indices: Flat ``intp`` leaf indices in ``[0, capacity)``, already written
        """
        if self._pending:
            self._pending.append(indices)
            indices = np.concatenate(self._pending)
            self._pending = []
        branching = self.branching
        rows = indices // branching
        leaves = self._values[0].take(rows, axis=0)
        self._values_flat[1][rows] = leaves.sum(axis=1)
        # Leaf level of the min-structure: zero (unfilled) leaves count as +inf
        self._mins_flat[1][rows] = (leaves.view(np.uint64) - _ONE).min(axis=1)
        for level in range(1, len(self._n_rows)):
            rows //= branching
            cumsum = np.add.accumulate(self._values[level].take(rows, axis=0), axis=1)
            self._prefix[level][rows, 1:branching] = cumsum[:, :-1]
            self._values_flat[level + 1][rows] = cumsum[:, -1]
            self._mins_flat[level + 1][rows] = self._mins[level].take(rows, axis=0).min(axis=1)
        # Root: all its children's prefix sums at once
        np.add.accumulate(self._values[-1], out=self._prefix[-1][1:])
        self._min = None

    def get(self, indices: np.ndarray) -> np.ndarray:
        """
        Read leaf values.

        :param indices: Leaf indices in ``[0, capacity)``, any shape
        :return: The leaf values (float64), same shape as ``indices``
        """
        flat_indices = self._check_indices(indices)
        return self._values_flat[0][flat_indices].reshape(np.shape(indices))

    __getitem__ = get

    def query(self, prefix_sums: np.ndarray) -> np.ndarray:
        """
        Find, for each prefix sum ``u``, the leaf ``i`` with ``cumsum[i - 1] <= u < cumsum[i]``.

        This is ``np.searchsorted(np.cumsum(leaves), u, side="right")`` without the ``O(capacity)``
        cumulative sum. A leaf of value 0 (unfilled or zero priority) is never returned: when ``u``
        reaches the sum of a node (``u >= total``, or rounding), the last leaf of positive value of
        that node is returned.

        :param prefix_sums: Values ``u >= 0``, typically drawn in ``[0, total)``, any shape
        :return: The leaf indices (int64), same shape as ``prefix_sums``
        """
        u = np.asarray(prefix_sums, dtype=np.float64)
        shape = u.shape
        u = u.reshape(-1)
        if not self.total > 0:
            raise ValueError("cannot query a sum tree whose total is 0 (no positive leaf to sample)")
        if u.size == 0:
            return np.zeros(shape, dtype=np.int64)
        if not u.min() >= 0:
            bad = u[~(u >= 0)][0]
            raise ValueError(f"prefix sums must be >= 0 and not NaN, got {float(bad)}")
        leaves, _ = self._query(u)
        return leaves.reshape(shape).astype(np.int64, copy=False)

    def _query(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """
        ``query`` without input checks, also returning the values of the leaves found.

        :param u: Flat float64 prefix sums, ``>= 0``, not all of them if the total is 0; sorted is
            fastest (``np.searchsorted`` then narrows its search from one key to the next)
        :return: Leaf indices (``intp``) and their values (float64, all positive)
        """
        leaves, values = self._descend(u)
        # The fast descent ends on a zero leaf when ``u`` overflowed a node whose last child is 0:
        # redo those with the exact clamping rule
        if not values.all():
            zero = values == 0
            leaves[zero] = self._descend_clamped(u[zero])
            values[zero] = self._values_flat[0][leaves[zero]]
        return leaves, values

    def _batch_row_starts(self, batch_size: int, width: int) -> np.ndarray:
        """``arange(batch_size) * width``, cached: flat index of the first entry of each row of a batch."""
        key = (batch_size, width)
        starts = self._row_starts.get(key)
        if starts is None:
            if len(self._row_starts) > 64:
                self._row_starts.clear()
            starts = self._row_starts[key] = np.arange(0, batch_size * width, width)
        return starts

    def _descend(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """
        Descend from the root choosing, at each level, child ``c`` with ``cum[c] <= u < cum[c + 1]``.

        ``cum[c]`` is the sum of the children left of child ``c``. The last ``cum`` is not compared (it
        is ``+inf`` in the stored prefix sums), so a ``u`` that overflows the node (``u >= total`` or
        rounding) picks the last child. If that child is 0 (possibly a padding node, whose descendants
        are leaves >= capacity), the descent ends on a zero leaf; otherwise it makes the same choices as
        ``_descend_clamped``.

        :param u: Flat array of prefix sums
        :return: Leaf indices, possibly ``>= capacity`` (padding), and the leaf values (0 for padding)
        """
        if self._pending:
            self._flush()
        branching = self.branching
        batch_size = u.shape[0]
        root_prefix = self._prefix[-1]
        rows = self._root_bounds.searchsorted(u, side="right")
        u = u - root_prefix[rows]
        u_column = u[:, None]
        starts = self._batch_row_starts(batch_size, branching + 1)
        for level in range(len(self._n_rows) - 1, 0, -1):
            # mode="clip": a padding node (index >= n_rows) reads the last row (see ``__init__``)
            prefix = self._prefix[level].take(rows, axis=0, mode="clip")
            # The first child whose prefix sum (of it and its left siblings) exceeds u; the last column
            # is +inf, so argmin finds a False
            child = (prefix[:, 1:] <= u_column).argmin(axis=1)
            u -= prefix.reshape(-1)[starts + child]
            rows *= branching
            rows += child
        # Leaves: the only cumulative sum of the query. Its last column is set to +inf, as stored
        # prefix sums are above (an all-zero row, padding, keeps its zero values)
        leaf_rows = self._values[0].take(rows, axis=0, mode="clip")
        cumsum = np.add.accumulate(leaf_rows, axis=1)
        cumsum[:, -1] = np.inf
        child = (cumsum <= u_column).argmin(axis=1)
        values = leaf_rows.reshape(-1)[self._batch_row_starts(batch_size, branching) + child]
        rows *= branching
        rows += child
        return rows, values

    def _descend_clamped(self, u: np.ndarray) -> np.ndarray:
        """
        Descend from the root like ``_descend``, clamping an overflowing ``u`` to the last positive child.

        Cumulative sums are non-decreasing, so ``#{c: cum[c + 1] <= u}`` is the child containing ``u``
        and ``#{c: cum[c + 1] < cum[k]}`` the last child of positive sum (the node's sum is positive:
        it was chosen by the same rule one level up, or it is the root). Each row's cumulative sum is
        recomputed from its children, as ``_update_ancestors`` computes the stored ones: same numbers.

        :param u: Flat array of prefix sums
        :return: Leaf indices, all of positive value
        """
        branching = self.branching
        batch_size = u.shape[0]
        root_prefix = self._prefix[-1]
        rows = np.minimum(
            np.searchsorted(root_prefix[1:], u, side="right"),
            np.searchsorted(root_prefix[1:], root_prefix[-1], side="left"),
        )
        u = u - root_prefix[rows]
        for level in range(len(self._n_rows) - 1, -1, -1):
            cumsum = np.zeros((batch_size, branching + 1))
            np.cumsum(self._values[level][rows], axis=1, out=cumsum[:, 1:])
            child = np.minimum(
                (cumsum[:, 1:] <= u[:, None]).sum(axis=1),
                (cumsum[:, 1:] < cumsum[:, -1:]).sum(axis=1),
            )
            u = u - cumsum[np.arange(batch_size), child]
            rows = rows * branching + child
        return rows
