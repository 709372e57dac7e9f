import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sb3_dqn_ext import priorities
from sb3_dqn_ext.sum_tree import SumTree


def reference_query(leaves: np.ndarray, prefix_sums: np.ndarray) -> np.ndarray:
    """
    Plain-numpy reference of ``SumTree.query``: ``searchsorted`` on the cumulative sum of the leaves,
    clamped to the last positive leaf (``u >= total`` would otherwise give an index past it).
    """
    last_positive = np.flatnonzero(leaves > 0)[-1]
    return np.minimum(np.searchsorted(np.cumsum(leaves), prefix_sums, side="right"), last_positive)


def reference_min(leaves: np.ndarray) -> float:
    """Plain-numpy reference of ``SumTree.min``."""
    positive = leaves[leaves > 0]
    return float(positive.min()) if positive.size > 0 else math.inf


def leaves_of(tree: SumTree) -> np.ndarray:
    """All leaves of the tree, through the public ``get``."""
    return tree.get(np.arange(tree.capacity))


def assert_bitwise_equal(tree: SumTree, other: SumTree) -> None:
    """Every stored array (level offsets, node sums, minimums) is bitwise equal (so ``-0.0 != 0.0``)."""
    for name in ("_offsets", "_sums", "_mins"):
        array, other_array = getattr(tree, name), getattr(other, name)
        assert array.dtype == other_array.dtype
        assert array.tobytes() == other_array.tobytes(), name


def below(x: float) -> float:
    """The largest float64 below ``x``."""
    return float(np.nextafter(x, -math.inf))


def test_binary_tree_of_five_leaves() -> None:
    # Levels stored leaves first in one array, each padded to a multiple of 2 (offsets [0, 6, 10, 12, 13]):
    #
    #   root                          15
    #   level 2               10              5
    #   level 1           3       7       5       0 (padding)
    #   leaves          1   2   3   4   5   0 (padding)
    #
    # cumsum of the leaves: [1, 3, 6, 10, 15]
    tree = SumTree(5, branching=2)
    tree.update(np.arange(5), np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert tree.capacity == 5
    assert tree.branching == 2
    assert tree.total == 15.0
    assert tree.min == 1.0
    np.testing.assert_array_equal(tree._offsets, [0, 6, 10, 12, 13])
    np.testing.assert_array_equal(tree._sums, [1, 2, 3, 4, 5, 0, 3, 7, 5, 0, 10, 5, 15])
    np.testing.assert_array_equal(tree._mins, [1, 3, 5, math.inf, 1, 5, 1])
    np.testing.assert_array_equal(tree.get(np.array([4, 0, 2])), [5.0, 1.0, 3.0])
    np.testing.assert_array_equal(tree[np.array([1, 3])], [2.0, 4.0])
    prefix_sums = np.array([0.0, 0.5, below(1), 1, 2.999, 3, below(6), 6, 9.5, 10, below(15), 15, 1e300, math.inf])
    expected = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4, 4])
    np.testing.assert_array_equal(tree.query(prefix_sums), expected)
    np.testing.assert_array_equal(reference_query(leaves_of(tree), prefix_sums), expected)


def test_four_ary_tree_of_five_leaves() -> None:
    # Leaves padded to 8, level 1 to 4 (offsets [0, 8, 12, 13]):
    #
    #   root                               15
    #   level 1             10              5              0 (padding)    0 (padding)
    #   leaves         1   2   3   4   5   0   0   0 (padding)
    tree = SumTree(5, branching=4)
    tree.update(np.arange(5), np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert tree.total == 15.0
    assert tree.min == 1.0
    np.testing.assert_array_equal(tree._offsets, [0, 8, 12, 13])
    np.testing.assert_array_equal(tree._sums, [1, 2, 3, 4, 5, 0, 0, 0, 10, 5, 0, 0, 15])
    np.testing.assert_array_equal(tree._mins, [1, 5, math.inf, math.inf, 1])
    prefix_sums = np.array([0.0, below(1), 1, below(3), 3, below(10), 10, 12.5, below(15), 15, 16])
    expected = np.array([0, 0, 1, 1, 2, 3, 4, 4, 4, 4, 4])
    np.testing.assert_array_equal(tree.query(prefix_sums), expected)
    np.testing.assert_array_equal(reference_query(leaves_of(tree), prefix_sums), expected)


@pytest.mark.parametrize("branching", [2, 4])
def test_query_skips_zero_leaves_in_the_middle_and_at_the_end(branching: int) -> None:
    # Leaves [1, 2, 0, 4, 0], cumsum [1, 3, 3, 7, 7]; with branching 2:
    #
    #   root                           7
    #   level 2                7               0
    #   level 1            3       4       0       0 (padding)
    #   leaves           1   2   0   4   0   0 (padding)
    #
    # and with branching 4: leaves [1, 2, 0, 4 | 0, 0, 0, 0], level 1 [7, 0, 0, 0], root 7.
    # u in [3, 7) falls in leaf 3 (leaf 2 is empty); u >= 7 is clamped to leaf 3, the last positive one.
    tree = SumTree(5, branching=branching)
    tree.update(np.arange(5), np.array([1.0, 2.0, 0.0, 4.0, 0.0]))
    assert tree.total == 7.0
    assert tree.min == 1.0
    prefix_sums = np.array([0.0, below(1), 1, below(3), 3, 6.5, below(7), 7, 100])
    expected = np.array([0, 0, 1, 1, 3, 3, 3, 3, 3])
    np.testing.assert_array_equal(tree.query(prefix_sums), expected)
    np.testing.assert_array_equal(reference_query(leaves_of(tree), prefix_sums), expected)
    # Zero the first leaf too: the smallest positive leaf is now 2
    tree.update(np.array([0]), np.array([0.0]))
    assert tree.min == 2.0
    np.testing.assert_array_equal(tree.query(np.array([0.0, below(2), 2, 5.9, 6])), [1, 1, 3, 3, 3])


def test_query_clamps_a_rounding_overflow_to_the_last_positive_leaf() -> None:
    # Leaves [0.1, 0.5, 1.1, 0], branching 2:
    #
    #   root                 1.7000000000000002
    #   level 1          0.6                  1.1
    #   leaves       0.1     0.5          1.1      0
    #
    # u = 1.7 < total goes right, where u - 0.6 rounds to 1.1: it reaches the sum of that node, whose last
    # child is 0, so the query returns leaf 2, the last positive leaf of the node.
    tree = SumTree(4, branching=2)
    tree.update(np.arange(4), np.array([0.1, 0.5, 1.1, 0.0]))
    assert tree.total == 1.7000000000000002
    assert 1.7 - 0.6 == 1.1
    np.testing.assert_array_equal(tree.query(np.array([1.7, tree.total])), [2, 2])
    np.testing.assert_array_equal(reference_query(leaves_of(tree), np.array([1.7, tree.total])), [2, 2])


def test_query_never_returns_zero_leaves() -> None:
    # A partially filled tree (capacity not a multiple of 16) with scattered zero priorities, queried
    # across and beyond its total
    rng = np.random.default_rng(0)
    leaves = np.zeros(1001)
    leaves[:700] = rng.integers(0, 4, size=700) / 4  # a quarter of them 0
    tree = SumTree(1001)
    tree.update(np.arange(1001), leaves)
    prefix_sums = np.concatenate([np.linspace(0, tree.total, 5000), [below(tree.total), tree.total, 1e308, math.inf]])
    found = tree.query(prefix_sums)
    assert np.all(leaves[found] > 0)
    np.testing.assert_array_equal(found, reference_query(leaves, prefix_sums))


def test_single_leaf_tree() -> None:
    # Leaf padded to 2: leaves [3, 0 (padding)], root 3
    tree = SumTree(1, branching=2)
    assert tree.total == 0.0
    assert tree.min == math.inf
    tree.update(np.array([0]), np.array([3.0]))
    np.testing.assert_array_equal(tree._sums, [3, 0, 3])
    assert tree.total == 3.0
    assert tree.min == 3.0
    np.testing.assert_array_equal(tree.query(np.array([0.0, 2.9, 3.0, 10.0])), [0, 0, 0, 0])


@pytest.mark.parametrize("branching", [2, 3, 16])
def test_capacity_not_a_multiple_of_branching_keeps_padding_at_zero(branching: int) -> None:
    capacity = 7
    tree = SumTree(capacity, branching=branching)
    tree.update(np.arange(capacity), np.arange(1.0, capacity + 1.0))
    assert tree.total == 28.0
    assert tree.min == 1.0
    # Padding leaves (and nodes) stay 0, are never returned, even for u >= total
    n_leaf_slots = tree._offsets[1]
    np.testing.assert_array_equal(tree._sums[capacity:n_leaf_slots], 0.0)
    prefix_sums = np.array([0.0, 27.5, below(28), 28.0, 1e9])
    np.testing.assert_array_equal(tree.query(prefix_sums), [0, 6, 6, 6, 6])


def test_min_tracks_positive_leaves_only() -> None:
    tree = SumTree(10, branching=3)
    assert tree.min == math.inf
    tree.update(np.array([2, 7]), np.array([0.5, 0.25]))
    assert tree.min == 0.25
    tree.update(np.array([7]), np.array([0.0]))  # a zero leaf counts as +inf
    assert tree.min == 0.5
    tree.update(np.array([9]), np.array([5e-324]))  # the smallest subnormal is positive
    assert tree.min == 5e-324
    tree.update(np.array([2, 9]), np.array([0.0, 0.0]))
    assert tree.min == math.inf
    assert tree.total == 0.0


def test_negative_zero_counts_as_zero() -> None:
    tree = SumTree(4, branching=2)
    tree.update(np.arange(4), np.array([1.0, -0.0, 2.0, -0.0]))
    assert tree.min == 1.0
    np.testing.assert_array_equal(tree.query(np.array([0.5, 1.0, 2.9, 3.0])), [0, 2, 2, 2])
    # Stored as +0.0, bitwise: the tree is the one built from +0.0
    other = SumTree(4, branching=2)
    other.update(np.arange(4), np.array([1.0, 0.0, 2.0, 0.0]))
    assert_bitwise_equal(tree, other)
    tree.update(np.arange(4), -0.0)
    assert tree.total == 0.0
    assert tree.min == math.inf


def test_update_with_duplicate_indices_last_wins() -> None:
    tree = SumTree(8, branching=2)
    indices = np.array([3, 1, 3, 6, 1, 3])
    values = np.array([1.0, 2.0, 3.0, 4.0, 0.0, 5.0])
    tree.update(indices, values)
    expected = np.zeros(8)
    expected[indices] = values  # numpy assignment: last occurrence wins
    np.testing.assert_array_equal(leaves_of(tree), expected)
    np.testing.assert_array_equal(expected[[1, 3, 6]], [0.0, 5.0, 4.0])
    assert tree.total == 9.0
    assert tree.min == 4.0
    np.testing.assert_array_equal(tree.query(np.array([0.0, 4.9, 5.0, 8.9])), [3, 3, 6, 6])


def test_update_broadcasts_a_scalar_and_accepts_any_integer_dtype_and_shape() -> None:
    tree = SumTree(10, branching=4)
    tree.update(np.array([[0, 1], [2, 3]], dtype=np.uint8), 2.0)
    tree.update(np.array([[4], [5]], dtype=np.int16), np.array([[1.0], [3.0]]))
    tree.update(np.array([9]), np.array([0.5]))
    np.testing.assert_array_equal(leaves_of(tree), [2, 2, 2, 2, 1, 3, 0, 0, 0, 0.5])
    values = tree.get(np.array([[5, 0], [9, 9]], dtype=np.uint64))
    assert values.shape == (2, 2)
    np.testing.assert_array_equal(values, [[3, 2], [0.5, 0.5]])
    found = tree.query(np.array([[0.0, 12.0], [12.4, 8.5]]))
    assert found.dtype == np.int64
    np.testing.assert_array_equal(found, [[0, 9], [9, 4]])


@pytest.mark.parametrize("bad_value, message", [(-1.5, "-1.5"), (np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_update_rejects_bad_values_and_writes_nothing(bad_value: float, message: str) -> None:
    tree = SumTree(10, branching=2)
    tree.update(np.arange(10), np.arange(10.0))
    before = pickle.loads(pickle.dumps(tree))
    with pytest.raises(ValueError, match=f"got {message}$"):
        tree.update(np.array([1, 2, 3]), np.array([7.0, bad_value, 8.0]))
    with pytest.raises(ValueError, match=f"got {message}$"):
        tree.update(np.array([1, 2, 3]), bad_value)
    assert_bitwise_equal(tree, before)


@pytest.mark.parametrize("bad_index", [10, 11, -1, -10, 2**40])
def test_update_and_get_reject_out_of_range_indices_and_write_nothing(bad_index: int) -> None:
    tree = SumTree(10, branching=2)
    tree.update(np.arange(10), 1.0)
    before = pickle.loads(pickle.dumps(tree))
    with pytest.raises(IndexError, match=rf"leaf index {bad_index} is out of range \[0, 10\)"):
        tree.update(np.array([0, bad_index, 1]), np.array([5.0, 5.0, 5.0]))
    with pytest.raises(IndexError, match=rf"leaf index {bad_index} is out of range"):
        tree.get(np.array([bad_index]))
    assert_bitwise_equal(tree, before)


def test_update_rejects_unsigned_and_non_integer_indices() -> None:
    tree = SumTree(10, branching=2)
    before = pickle.loads(pickle.dumps(tree))
    with pytest.raises(IndexError, match=f"leaf index {2**64 - 1} is out of range"):
        tree.update(np.array([2**64 - 1], dtype=np.uint64), 1.0)
    with pytest.raises(IndexError, match=r"must be integers, got .*1\.5"):
        tree.update(np.array([1.5]), 1.0)
    with pytest.raises(IndexError, match=r"must be integers, got .*True"):
        tree.get(np.array([True]))
    assert_bitwise_equal(tree, before)


def test_update_rejects_mismatched_shapes() -> None:
    tree = SumTree(10, branching=2)
    with pytest.raises(ValueError, match=r"values shape \(2,\) does not match indices shape \(3,\)"):
        tree.update(np.arange(3), np.ones(2))
    with pytest.raises(ValueError, match="does not match"):
        tree.update(np.arange(4).reshape(2, 2), np.ones(4))
    assert tree.total == 0.0


def test_query_rejects_an_all_zero_tree_and_bad_prefix_sums() -> None:
    tree = SumTree(10, branching=2)
    with pytest.raises(ValueError, match="total is 0"):
        tree.query(np.array([0.0]))
    tree.update(np.arange(3), np.array([1.0, 0.0, 2.0]))
    tree.update(np.arange(3), 0.0)  # back to all zeros
    with pytest.raises(ValueError, match="total is 0"):
        tree.query(np.array([]))
    tree.update(np.array([4]), 1.0)
    with pytest.raises(ValueError, match=r"got -0\.5$"):
        tree.query(np.array([0.5, -0.5]))
    with pytest.raises(ValueError, match=r"got nan$"):
        tree.query(np.array([np.nan]))
    np.testing.assert_array_equal(tree.query(np.array([-0.0, math.inf])), [4, 4])


def test_empty_batches_work() -> None:
    tree = SumTree(10, branching=2)
    tree.update(np.array([], dtype=np.int64), np.array([]))
    tree.update(np.array([]), 1.0)  # an empty float array is an empty batch too
    tree.update(np.zeros((0, 3), dtype=np.int32), np.zeros((0, 3)))
    assert tree.total == 0.0
    assert tree.get(np.zeros((0, 2), dtype=np.intp)).shape == (0, 2)
    tree.update(np.array([1]), 1.0)
    found = tree.query(np.zeros((2, 0)))
    assert found.shape == (2, 0)
    assert found.dtype == np.int64
    # The prioritized buffers' kernels too
    leaves, weights = priorities.sample(tree, np.array([]), 0.4, batch_min=True)
    assert leaves.shape == (0,) and weights.shape == (0, 1)
    assert priorities.set_priorities(tree, np.array([], dtype=np.intp), np.array([]), 1e-6, 0.6) == 0.0
    assert tree.total == 1.0


def test_update_recomputes_only_the_ancestors_of_changed_leaves() -> None:
    # 16 leaves, branching 2: poison the internal nodes, update leaf 5 and see which nodes were rewritten
    tree = SumTree(16, branching=2)
    tree.update(np.arange(16), 1.0)
    internal = slice(tree._offsets[1], None)
    tree._sums[internal] = -1.0
    tree._update(np.array([5], dtype=np.intp), np.array([2.0]))
    rewritten = np.flatnonzero(tree._sums[internal] != -1.0) + tree._offsets[1]
    # Ancestors of leaf 5: node 2 of level 1, 1 of level 2, 0 of level 3, the root
    expected = [tree._offsets[1] + 2, tree._offsets[2] + 1, tree._offsets[3] + 0, tree._offsets[4]]
    np.testing.assert_array_equal(rewritten, expected)
    assert tree._sums[tree._offsets[1] + 2] == 3.0  # recomputed from its children 1 + 2, not by a delta


def test_pickle_round_trip_is_exact() -> None:
    rng = np.random.default_rng(0)
    tree = SumTree(1000, branching=8)
    tree.update(np.arange(1000), rng.random(1000) * (rng.random(1000) > 0.3))
    copy = pickle.loads(pickle.dumps(tree))
    assert (copy.capacity, copy.branching) == (1000, 8)
    assert_bitwise_equal(copy, tree)
    assert (copy.total, copy.min) == (tree.total, tree.min)
    # And both keep working the same way
    indices, values = np.array([3, 999, 3]), np.array([0.5, 2.0, 0.25])
    tree.update(indices, values)
    copy.update(indices, values)
    assert_bitwise_equal(copy, tree)
    prefix_sums = np.linspace(0, tree.total, 100)
    np.testing.assert_array_equal(copy.query(prefix_sums), tree.query(prefix_sums))


def test_constructor_rejects_bad_arguments() -> None:
    for capacity in (0, -1, 2.0, True, "10"):
        with pytest.raises(ValueError, match=f"capacity must be a positive integer, got {capacity!r}"):
            SumTree(capacity)  # type: ignore[arg-type]  # deliberately wrong types
    for branching in (1, 0, 4.0):
        with pytest.raises(ValueError, match=f"branching must be an integer >= 2, got {branching!r}"):
            SumTree(10, branching)  # type: ignore[arg-type]
    assert SumTree(np.int64(10), np.int32(3)).capacity == 10  # type: ignore[arg-type]  # numpy integers are fine


@pytest.mark.parametrize("branching", [2, 16])
def test_large_tree_matches_numpy_reference(branching: int) -> None:
    # Leaves that are multiples of 1/8 below 2**20: every sum is exact, so the tree must agree with the
    # reference on every prefix sum
    rng = np.random.default_rng(branching)
    leaves = rng.integers(0, 2**23, size=100_003) / 8 * (rng.random(100_003) > 0.2)
    tree = SumTree(100_003, branching=branching)
    tree.update(np.arange(100_003), leaves)
    assert tree.total == leaves.sum()
    assert tree.min == reference_min(leaves)
    prefix_sums = np.concatenate([rng.random(5000) * tree.total, np.cumsum(leaves)[::97], [tree.total]])
    np.testing.assert_array_equal(tree.query(prefix_sums), reference_query(leaves, prefix_sums))


# Property-based tests: random sequences of updates (duplicates, zeros), then query, total, min and get
# against the numpy reference, and the stored arrays against a tree built in one update from the same leaves
# (internal nodes depend on the leaves only, never on the update history).
EXACT_VALUES = st.one_of(st.just(0.0), st.integers(1, 2**20).map(lambda m: m / 8))
ANY_VALUES = st.one_of(
    st.sampled_from([0.0, -0.0, 5e-324, 1e-300, 1e-12, 1.0, 1e12, 1e100]),
    st.floats(min_value=0.0, max_value=1e100),
)


def draw_updates(data: st.DataObject, values: st.SearchStrategy[float]) -> tuple[SumTree, np.ndarray]:
    """Build a tree of random capacity and branching from random batches of updates; return it and its leaves."""
    capacity = data.draw(st.integers(1, 80), label="capacity")
    branching = data.draw(st.sampled_from([2, 3, 4, 16, 32]), label="branching")
    tree = SumTree(capacity, branching=branching)
    leaves = np.zeros(capacity)
    for _ in range(data.draw(st.integers(1, 4), label="n_updates")):
        indices = np.array(data.draw(st.lists(st.integers(0, capacity - 1), max_size=2 * capacity)), dtype=np.int64)
        batch = np.array(data.draw(st.lists(values, min_size=indices.size, max_size=indices.size)), dtype=np.float64)
        tree.update(indices, batch)
        leaves[indices] = batch
    leaves += 0.0  # -0.0 is stored as 0.0
    fresh = SumTree(capacity, branching=branching)
    fresh.update(np.arange(capacity), leaves)
    assert_bitwise_equal(tree, fresh)
    np.testing.assert_array_equal(leaves_of(tree), leaves)
    assert tree.min == reference_min(leaves)
    return tree, leaves


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_updates_match_numpy_reference_exactly(data: st.DataObject) -> None:
    # Multiples of 1/8 below 2**17 with at most 80 leaves: every sum and subtraction is exact
    tree, leaves = draw_updates(data, EXACT_VALUES)
    assert tree.total == leaves.sum()
    if tree.total == 0:
        return
    cumsum = np.cumsum(leaves)
    boundaries = np.concatenate([cumsum, np.nextafter(cumsum, -math.inf), [tree.total * 2, math.inf]])
    random_sums = np.array(data.draw(st.lists(st.floats(0.0, tree.total), max_size=20)))
    prefix_sums = np.concatenate([boundaries[boundaries >= 0], random_sums])
    np.testing.assert_array_equal(tree.query(prefix_sums), reference_query(leaves, prefix_sums))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_random_tiny_and_huge_leaves_are_found_within_rounding(data: st.DataObject) -> None:
    # With rounding, a prefix sum within a few ulps of the total of a boundary may land on either side
    tree, leaves = draw_updates(data, ANY_VALUES)
    np.testing.assert_allclose(tree.total, leaves.sum(), rtol=1e-12)
    if tree.total == 0:
        return
    random_sums = np.array(data.draw(st.lists(st.floats(0.0, tree.total), max_size=20)))
    prefix_sums = np.concatenate([random_sums, np.cumsum(leaves), [tree.total, math.inf]])
    found = tree.query(prefix_sums)
    assert np.all(leaves[found] > 0)
    upper = np.cumsum(leaves)[found]
    lower = upper - leaves[found]
    tolerance = 1e-12 * tree.total
    clamped = found == np.flatnonzero(leaves > 0)[-1]
    assert np.all(lower - tolerance <= prefix_sums)
    assert np.all((prefix_sums < upper + tolerance) | clamped)
