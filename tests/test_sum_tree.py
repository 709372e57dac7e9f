import math
import pickle
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sb3_dqn_ext.sum_tree import SumTree


def reference_query(leaves: np.ndarray, prefix_sums: np.ndarray) -> np.ndarray:
    """
    Plain-numpy reference of ``SumTree.query``: ``searchsorted`` on the cumulative sum of the leaves,
    clamped to the last positive leaf (``u >= total`` would otherwise give an index past it).
    """
    last_positive = np.flatnonzero(leaves > 0)[-1]
    return np.minimum(np.searchsorted(np.cumsum(leaves), prefix_sums, side="right"), last_positive)


def leaves_of(tree: SumTree) -> np.ndarray:
    """All leaves of the tree, through the public ``get``."""
    return tree.get(np.arange(tree.capacity))


def assert_same_structure(tree: SumTree, other: SumTree) -> None:
    """Every stored array (node values, prefix sums, min-structure) is bitwise equal."""
    for name in ("_values", "_prefix", "_mins"):
        levels, other_levels = getattr(tree, name), getattr(other, name)
        assert len(levels) == len(other_levels)
        for level, other_level in zip(levels, other_levels, strict=True):
            np.testing.assert_array_equal(level, other_level)


def test_binary_tree_of_five_leaves() -> None:
    # Plain binary tree (max_root_children=1: the root has a single child), each level padded to a
    # multiple of 2 only:
    #
    #                  15
    #           /            \
    #         10               5
    #       /    \          /    \
    #      3      7        5      0 (padding)
    #     / \    / \      / \
    #    1   2  3   4    5   0 (padding)
    #
    # cumsum of the leaves: [1, 3, 6, 10, 15]
    tree = SumTree(5, branching=2, max_root_children=1)
    tree.update(np.arange(5), np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert tree.capacity == 5
    assert tree.branching == 2
    assert tree.total == 15.0
    assert tree.min == 1.0
    np.testing.assert_array_equal(tree.get(np.array([4, 0, 2])), [5.0, 1.0, 3.0])
    np.testing.assert_array_equal(tree[np.array([1, 3])], [2.0, 4.0])
    # Stored nodes, level by level
    np.testing.assert_array_equal(tree._values[0], [[1, 2], [3, 4], [5, 0], [0, 0]])  # + 1 zero row
    np.testing.assert_array_equal(tree._values[1], [[3, 7], [5, 0]])
    np.testing.assert_array_equal(tree._values[2], [[10, 5]])
    np.testing.assert_array_equal(tree._values[3], [15])
    prefix_sums = np.array([0.0, 0.5, 1.0, 2.999, 3.0, 5.5, 6.0, 9.0, 10.0, 14.5, np.nextafter(15.0, 0), 15.0, 100.0])
    expected = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4, 4])
    np.testing.assert_array_equal(tree.query(prefix_sums), expected)
    np.testing.assert_array_equal(reference_query(leaves_of(tree), prefix_sums), expected)


def test_binary_tree_with_zero_leaves_clamps_to_last_positive_leaf() -> None:
    # Leaves [1, 2, 0, 4, 0] (cumsum [1, 3, 3, 7, 7]):
    #
    #                   7
    #           /            \
    #          7               0
    #       /    \          /    \
    #      3      4        0      0 (padding)
    #     / \    / \      / \
    #    1   2  0   4    0   0 (padding)
    tree = SumTree(5, branching=2, max_root_children=1)
    tree.update(np.arange(5), np.array([1.0, 2.0, 0.0, 4.0, 0.0]))
    assert tree.total == 7.0
    assert tree.min == 1.0
    np.testing.assert_array_equal(tree._values[1], [[3, 4], [0, 0]])
    # u = 3 is the boundary of leaf 2, which is empty: it goes right, to leaf 3
    prefix_sums = np.array([0.0, 0.999, 1.0, 2.5, 3.0, 6.999, 7.0, 8.0])
    expected = np.array([0, 0, 1, 1, 3, 3, 3, 3])
    np.testing.assert_array_equal(tree.query(prefix_sums), expected)
    np.testing.assert_array_equal(reference_query(leaves_of(tree), prefix_sums), expected)


def test_four_ary_tree_of_five_leaves() -> None:
    # branching=4 (max_root_children=1), leaves padded to 8:
    #
    #                        15.5
    #              /        |      |   \
    #            10        5.5     0    0 (padding)
    #        /  /  \  \    / | | \
    #       1  2    3  4 5.5 0 0 0 (padding)
    #
    # cumsum of the leaves: [1, 3, 6, 10, 15.5]
    tree = SumTree(5, branching=4, max_root_children=1)
    tree.update(np.array([0, 1, 2, 3, 4]), np.array([1.0, 2.0, 3.0, 4.0, 5.5]))
    np.testing.assert_array_equal(tree._values[0], [[1, 2, 3, 4], [5.5, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(tree._values[1], [[10, 5.5, 0, 0]])
    # Prefix sums of the root's row, the last column +inf (the row's sum, 15.5, is the root's value)
    np.testing.assert_array_equal(tree._prefix[1], [[0, 10, 15.5, 15.5, np.inf]])
    np.testing.assert_array_equal(tree._values[2], [15.5])
    assert tree.total == 15.5
    assert tree.min == 1.0
    prefix_sums = np.array([0.0, 1.0, 3.0, 5.999, 6.0, 9.999, 10.0, 15.0, 15.5, 16.0])
    expected = np.array([0, 1, 2, 2, 3, 3, 4, 4, 4, 4])
    np.testing.assert_array_equal(tree.query(prefix_sums), expected)
    # Emptying the leaves of the first node: everything goes to leaf 4
    tree.update(np.array([0, 1, 2, 3]), 0.0)
    np.testing.assert_array_equal(tree._values[1], [[0, 5.5, 0, 0]])
    assert tree.total == 5.5
    assert tree.min == 5.5
    np.testing.assert_array_equal(tree.query(np.array([0.0, 5.0, 5.5, 7.0])), [4, 4, 4, 4])


def test_wide_root_of_five_leaves() -> None:
    # Default layout: leaves in rows of 2, at most MAX_ROOT_CHILDREN (>= 3) children under the root
    #
    #              root: 15 (prefix sums [0, 3, 10, 15])
    #         /         |        \
    #        3          7         5
    #      /   \      /   \     /   \
    #     1     2    3     4   5     0 (padding)
    tree = SumTree(5, branching=2)
    tree.update(np.arange(5), np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    np.testing.assert_array_equal(tree._values[1], [3, 7, 5])
    np.testing.assert_array_equal(tree._prefix[1], [0, 3, 10, 15])
    assert tree.total == 15.0
    prefix_sums = np.array([0.0, 1.0, 3.0, 6.0, 9.5, 10.0, 15.0])
    np.testing.assert_array_equal(tree.query(prefix_sums), [0, 1, 2, 3, 3, 4, 4])


def test_single_leaf_tree() -> None:
    tree = SumTree(1)
    assert tree.total == 0.0
    assert tree.min == math.inf
    tree.update(np.array([0]), np.array([2.5]))
    assert tree.total == 2.5
    assert tree.min == 2.5
    np.testing.assert_array_equal(tree.query(np.array([0.0, 1.0, 2.5, 10.0])), [0, 0, 0, 0])


def test_sum_tree_query_with_duplicate_indices() -> None:
    tree = SumTree(10, branching=4, max_root_children=1)
    tree.update(np.array([1, 3, 1, 7, 1, 3]), np.array([5.0, 2.0, 7.0, 1.0, 0.5, 4.0]))
    # Last write wins, as in ``leaves[indices] = values``
    np.testing.assert_array_equal(leaves_of(tree), [0, 0.5, 0, 4.0, 0, 0, 0, 1.0, 0, 0])
    assert tree.total == 5.5
    assert tree.min == 0.5
    # Ancestors are exactly as if each leaf had been set once
    reference = SumTree(10, branching=4, max_root_children=1)
    reference.update(np.array([1, 3, 7]), np.array([0.5, 4.0, 1.0]))
    assert_same_structure(tree, reference)
    np.testing.assert_array_equal(tree.query(np.array([0.0, 0.5, 4.4, 4.5, 5.5])), [1, 3, 3, 7, 7])


def test_duplicate_indices_in_many_rows_match_numpy_assignment() -> None:
    rng = np.random.default_rng(0)
    tree = SumTree(1000, branching=8)
    reference = SumTree(1000, branching=8)
    leaves = np.zeros(1000)
    for _ in range(20):
        indices = rng.integers(0, 1000, size=300)  # many duplicates
        values = rng.integers(0, 5, size=300) * 0.5
        tree.update(indices, values)
        leaves[indices] = values
    reference.update(np.arange(1000), leaves)
    np.testing.assert_array_equal(leaves_of(tree), leaves)
    assert tree.total == leaves.sum()
    assert_same_structure(tree, reference)


@pytest.mark.parametrize("branching", [2, 3, 4, 32])
@pytest.mark.parametrize("max_root_children", [1, 4096])
def test_zero_and_unfilled_leaves_are_never_returned(branching: int, max_root_children: int) -> None:
    tree = SumTree(6, branching=branching, max_root_children=max_root_children)
    tree.update(np.array([0, 1, 2, 3, 4, 5]), np.array([0.0, 3.0, 0.0, 0.0, 2.0, 0.0]))
    total = tree.total
    assert total == 5.0
    prefix_sums = np.concatenate(
        [
            [0.0, np.nextafter(3.0, 0), 3.0, np.nextafter(total, 0), total, np.nextafter(total, np.inf), 2 * total, np.inf],
            np.linspace(0, total, 101),
        ]
    )
    indices = tree.query(prefix_sums)
    assert set(indices.tolist()) == {1, 4}
    np.testing.assert_array_equal(indices, reference_query(leaves_of(tree), prefix_sums))
    np.testing.assert_array_equal(indices[:6], [1, 1, 4, 4, 4, 4])


def test_partially_filled_tree_never_returns_unfilled_leaves() -> None:
    # A replay buffer that is being filled: the last leaves, and the last children of the root, are 0
    tree = SumTree(100_000, branching=16)
    tree.update(np.arange(1000), 1.0)
    prefix_sums = np.concatenate([np.linspace(0, tree.total, 1001), [np.nextafter(tree.total, np.inf), 1e300]])
    indices = tree.query(prefix_sums)
    assert indices.max() == 999
    np.testing.assert_array_equal(indices, np.minimum(np.floor(prefix_sums), 999))


@pytest.mark.parametrize("capacity", [1, 2, 5, 31, 32, 33, 1000, 1001])
@pytest.mark.parametrize("branching", [2, 3, 4, 5, 16, 32])
@pytest.mark.parametrize("max_root_children", [1, 2, 4096])
def test_capacities_not_power_of_branching(capacity: int, branching: int, max_root_children: int) -> None:
    rng = np.random.default_rng(capacity * 1000 + branching)
    tree = SumTree(capacity, branching=branching, max_root_children=max_root_children)
    leaves = rng.integers(0, 4, size=capacity) * 0.25
    leaves[-1] = 1.0  # at least one positive leaf, at the very end (its row may have padding)
    tree.update(np.arange(capacity), leaves)
    np.testing.assert_array_equal(leaves_of(tree), leaves)
    assert tree.total == leaves.sum()
    assert tree.min == leaves[leaves > 0].min()
    cumsum = np.cumsum(leaves)
    prefix_sums = np.concatenate([cumsum, cumsum - 0.125, [0.0, tree.total, tree.total + 1]])
    prefix_sums = prefix_sums[prefix_sums >= 0]
    np.testing.assert_array_equal(tree.query(prefix_sums), reference_query(leaves, prefix_sums))


def test_wide_root_and_plain_tree_give_the_same_answers() -> None:
    rng = np.random.default_rng(1)
    leaves = rng.integers(0, 3, size=5000) * 0.5
    prefix_sums = rng.uniform(0, leaves.sum(), size=2000)
    answers = []
    for max_root_children in (1, 3, 100, 4096):
        tree = SumTree(5000, branching=4, max_root_children=max_root_children)
        tree.update(np.arange(5000), leaves)
        answers.append(tree.query(prefix_sums))
    for answer in answers:
        np.testing.assert_array_equal(answer, reference_query(leaves, prefix_sums))


def test_min_tracks_positive_leaves_only() -> None:
    tree = SumTree(100, branching=4, max_root_children=2)
    assert tree.min == math.inf
    tree.update(np.array([10, 50, 99]), np.array([3.0, 0.25, 7.0]))
    assert tree.min == 0.25
    # Setting the minimum back to 0 removes it
    tree.update(np.array([50]), np.array([0.0]))
    assert tree.min == 3.0
    tree.update(np.array([10, 99]), 0.0)
    assert tree.min == math.inf
    assert tree.total == 0.0
    # Tiny (subnormal) and huge values are exact
    tree.update(np.array([0, 1]), np.array([5e-324, 1e300]))
    assert tree.min == 5e-324
    assert tree.total == 1e300


def test_negative_zero_counts_as_zero() -> None:
    tree = SumTree(4, branching=2)
    tree.update(np.array([0, 1]), np.array([-0.0, 2.0]))
    assert tree.min == 2.0
    assert tree.total == 2.0
    np.testing.assert_array_equal(tree.query(np.array([0.0, 1.0, 2.0])), [1, 1, 1])
    tree.update(np.array([1, 2]), -0.0)
    assert tree.min == math.inf
    assert tree.total == 0.0


def test_update_broadcasts_scalar_value_and_keeps_shapes() -> None:
    tree = SumTree(20, branching=4)
    tree.update(np.array([[0, 1], [2, 19]]), 1.5)
    assert tree.total == 6.0
    values = tree.get(np.array([[0, 19], [3, 2]]))
    assert values.dtype == np.float64
    np.testing.assert_array_equal(values, [[1.5, 1.5], [0.0, 1.5]])
    assert tree[np.array(19)].shape == ()
    indices = tree.query(np.array([[0.0, 1.5], [3.0, 5.9]]))
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, [[0, 1], [2, 19]])
    tree.update(np.array([[0, 1], [2, 3]]), np.array([[1.0, 2.0], [0.0, 0.5]]))
    np.testing.assert_array_equal(leaves_of(tree)[:4], [1.0, 2.0, 0.0, 0.5])
    # Empty updates and queries are no-ops
    tree.update(np.array([], dtype=np.int64), np.array([]))
    assert tree.query(np.array([])).shape == (0,)


def test_update_recomputes_only_ancestors() -> None:
    tree = SumTree(8, branching=2, max_root_children=1)
    tree.update(np.arange(8), 1.0)
    # Corrupt node 3 of level 1 (parent of leaves 6 and 7): an update of leaf 0 must not touch it
    tree._values[1][1, 1] = 123.0
    tree.update(np.array([0]), np.array([5.0]))
    assert tree._values[1][1, 1] == 123.0
    # Ancestors of leaf 0 are recomputed from their children
    assert tree._values[1][0, 0] == 6.0
    assert tree._values[2][0, 0] == 8.0
    assert tree.total == 12.0


def check_against_reference(tree: SumTree, leaves: np.ndarray, random_sums: np.ndarray) -> None:
    """Leaves, total, min and queries (random ``u``, every boundary, 0 and total) match plain numpy exactly."""
    np.testing.assert_array_equal(leaves_of(tree), leaves)
    np.testing.assert_allclose(tree.total, leaves.sum(), rtol=1e-12)
    positive = leaves[leaves > 0]
    assert tree.min == (positive.min() if positive.size > 0 else math.inf)
    if positive.size == 0:
        with pytest.raises(ValueError, match="total is 0"):
            tree.query(np.array([0.0]))
        return
    prefix_sums = np.concatenate([random_sums, np.cumsum(leaves), [0.0, tree.total]])
    indices = tree.query(prefix_sums)
    np.testing.assert_array_equal(indices, reference_query(leaves, prefix_sums))
    assert (leaves[indices] > 0).all()


# Leaf values are multiples of 1/4 below 8: every sum is exact, so the tree must match the reference exactly
dyadic_values = st.one_of(st.just(0.0), st.integers(0, 32).map(lambda n: n / 4))


@settings(max_examples=150, deadline=None)
@given(
    capacity=st.integers(1, 100),
    branching=st.sampled_from([2, 3, 4, 5, 8, 32]),
    max_root_children=st.sampled_from([1, 2, 7, 4096]),
    data=st.data(),
)
def test_random_updates_and_queries_match_numpy_reference(
    capacity: int, branching: int, max_root_children: int, data: st.DataObject
) -> None:
    tree = SumTree(capacity, branching=branching, max_root_children=max_root_children)
    leaves = np.zeros(capacity)
    for _ in range(data.draw(st.integers(1, 3))):
        indices = data.draw(st.lists(st.integers(0, capacity - 1), min_size=1, max_size=10))
        values = data.draw(st.lists(dyadic_values, min_size=len(indices), max_size=len(indices)))
        tree.update(np.array(indices), np.array(values))
        leaves[indices] = values
    random_sums = data.draw(st.lists(st.floats(0, leaves.sum()), min_size=1, max_size=10))
    check_against_reference(tree, leaves, np.array(random_sums))


@settings(max_examples=500, deadline=None)
@given(
    capacity=st.integers(1, 1000),
    branching=st.sampled_from([2, 3, 4, 5, 8, 16, 32, 64]),
    max_root_children=st.sampled_from([1, 2, 7, 4096]),
    n_updates=st.integers(1, 6),
    batch_size=st.integers(1, 256),
    zero_fraction=st.sampled_from([0.0, 0.3, 0.9, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_update_sequences_match_numpy_reference(
    capacity: int, branching: int, max_root_children: int, n_updates: int, batch_size: int, zero_fraction: float, seed: int
) -> None:
    # Larger trees and batches than above, arrays drawn by numpy from a hypothesis seed (fast)
    rng = np.random.default_rng(seed)
    tree = SumTree(capacity, branching=branching, max_root_children=max_root_children)
    leaves = np.zeros(capacity)
    for _ in range(n_updates):
        # Indices in a random window, so that duplicates and siblings are frequent
        low = int(rng.integers(capacity))
        indices = rng.integers(low, min(capacity, low + 2 * batch_size), size=batch_size)
        values = rng.integers(1, 33, size=batch_size) / 4
        values[rng.random(batch_size) < zero_fraction] = 0.0
        tree.update(indices, values)
        leaves[indices] = values
    check_against_reference(tree, leaves, rng.uniform(0, leaves.sum(), size=64))


@settings(max_examples=100, deadline=None)
@given(
    capacity=st.integers(1, 300),
    branching=st.sampled_from([2, 4, 16, 32]),
    max_root_children=st.sampled_from([1, 4096]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_float_leaves_are_sampled_within_rounding(
    capacity: int, branching: int, max_root_children: int, seed: int
) -> None:
    # Arbitrary floats: the tree sums in another order than ``np.cumsum``, so compare up to rounding,
    # but a zero leaf must never be returned, whatever the rounding
    rng = np.random.default_rng(seed)
    leaves = rng.exponential(size=capacity) * 10.0 ** rng.integers(-3, 4, size=capacity)
    leaves[rng.random(capacity) < 0.3] = 0.0
    leaves[rng.integers(capacity)] = rng.random() + 0.1
    tree = SumTree(capacity, branching=branching, max_root_children=max_root_children)
    tree.update(np.arange(capacity), leaves)
    np.testing.assert_allclose(tree.total, leaves.sum(), rtol=1e-12)
    assert tree.min == leaves[leaves > 0].min()
    total = tree.total
    cumsum = np.cumsum(leaves)
    prefix_sums = np.concatenate([rng.uniform(0, total, size=64), cumsum, [0.0, np.nextafter(total, 0), total]])
    indices = tree.query(prefix_sums)
    assert (leaves[indices] > 0).all()
    tolerance = 1e-12 * total
    lower = np.concatenate([[0.0], cumsum])[indices]
    assert (lower - tolerance <= prefix_sums).all()
    below_total = prefix_sums < total - tolerance
    assert (prefix_sums[below_total] < cumsum[indices][below_total] + tolerance).all()


@pytest.mark.parametrize("bad_value, message", [(-1.5, "-1.5"), (np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_update_rejects_bad_values(bad_value: float, message: str) -> None:
    tree = SumTree(10, branching=4)
    tree.update(np.array([0]), np.array([1.0]))
    with pytest.raises(ValueError, match=re.escape(f"got {message}") + "$"):
        tree.update(np.array([1, 2, 3]), np.array([1.0, bad_value, 2.0]))
    with pytest.raises(ValueError, match=re.escape(f"got {message}") + "$"):
        tree.update(np.array([1, 2]), bad_value)
    # Nothing was written
    assert tree.total == 1.0
    np.testing.assert_array_equal(leaves_of(tree), [1.0] + [0.0] * 9)


@pytest.mark.parametrize("bad_index", [10, 11, -1, -10, 2**40])
def test_update_and_get_reject_indices_out_of_range(bad_index: int) -> None:
    tree = SumTree(10, branching=4)
    with pytest.raises(IndexError, match=f"leaf index {bad_index} is out of range"):
        tree.update(np.array([0, bad_index, 2]), np.array([1.0, 1.0, 1.0]))
    with pytest.raises(IndexError, match=f"leaf index {bad_index} is out of range"):
        tree.get(np.array([bad_index]))
    assert tree.total == 0.0


def test_update_rejects_unsigned_index_out_of_range_and_accepts_small_int_dtypes() -> None:
    tree = SumTree(10, branching=4)
    with pytest.raises(IndexError, match="leaf index 10 is out of range"):
        tree.update(np.array([10], dtype=np.uint8), np.array([1.0]))
    tree.update(np.array([9, -0], dtype=np.int8), np.array([1.0, 2.0]))
    tree.update(np.array([3], dtype=np.uint32), np.array([4.0]))
    np.testing.assert_array_equal(tree.get(np.array([0, 3, 9], dtype=np.int16)), [2.0, 4.0, 1.0])


def test_update_rejects_non_integer_indices() -> None:
    tree = SumTree(10, branching=4)
    with pytest.raises(IndexError, match="must be integers, got dtype float64"):
        tree.update(np.array([1.0]), np.array([1.0]))
    with pytest.raises(IndexError, match="must be integers, got dtype bool"):
        tree.get(np.array([True]))


def test_update_rejects_mismatched_shapes() -> None:
    tree = SumTree(10, branching=4)
    with pytest.raises(ValueError, match=r"values shape \(2,\) does not match indices shape \(3,\)"):
        tree.update(np.array([1, 2, 3]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"values shape \(1, 2\) does not match indices shape \(2,\)"):
        tree.update(np.array([1, 2]), np.array([[1.0, 2.0]]))


def test_query_rejects_empty_tree_and_bad_prefix_sums() -> None:
    tree = SumTree(10, branching=4)
    with pytest.raises(ValueError, match="total is 0"):
        tree.query(np.array([0.0]))
    tree.update(np.array([3]), np.array([0.0]))
    with pytest.raises(ValueError, match="total is 0"):
        tree.query(np.array([0.0]))
    tree.update(np.array([3]), np.array([1.0]))
    with pytest.raises(ValueError, match=r"got -0\.5$"):
        tree.query(np.array([0.1, -0.5]))
    with pytest.raises(ValueError, match=r"got nan$"):
        tree.query(np.array([np.nan, 0.5]))


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="capacity"):
        SumTree(0)
    with pytest.raises(ValueError, match="branching"):
        SumTree(10, branching=1)
    with pytest.raises(ValueError, match="max_root_children"):
        SumTree(10, max_root_children=0)


@pytest.mark.parametrize("max_root_children", [1, 4096])
def test_pickle_round_trip(max_root_children: int) -> None:
    rng = np.random.default_rng(2)
    tree = SumTree(3000, branching=8, max_root_children=max_root_children)
    tree.update(rng.integers(0, 3000, size=2000), rng.random(2000))
    loaded = pickle.loads(pickle.dumps(tree))
    assert (loaded.capacity, loaded.branching) == (tree.capacity, tree.branching)
    assert_same_structure(loaded, tree)
    prefix_sums = rng.uniform(0, tree.total, size=500)
    np.testing.assert_array_equal(loaded.query(prefix_sums), tree.query(prefix_sums))
    assert (loaded.total, loaded.min) == (tree.total, tree.min)
    # The loaded tree's internal views point to its own arrays: updates keep it consistent
    indices, values = rng.integers(0, 3000, size=100), rng.random(100)
    loaded.update(indices, values)
    tree.update(indices, values)
    assert_same_structure(loaded, tree)
    np.testing.assert_array_equal(loaded.query(prefix_sums), tree.query(prefix_sums))


def test_memory_is_linear_in_capacity() -> None:
    # 8e6 leaves (buffer_size 1e6 x 8 envs): no padding to a power of the branching factor
    capacity = 8_000_000
    for branching in (4, 32, 128):
        tree = SumTree(capacity, branching=branching)
        n_bytes = sum(array.nbytes for name in ("_values", "_prefix", "_mins") for array in getattr(tree, name))
        # Leaves, then per level: node values, prefix sums and minimums, about (3 + 1 / k) / (k - 1) of the leaves
        assert n_bytes < 8 * capacity * (1 + (3 + 1 / branching) / (branching - 1)) * 1.001 + 8 * 4 * branching**2


def test_deferred_updates_write_leaves_at_once_and_ancestors_at_the_next_read() -> None:
    # Leaves [0, 0, 0, 0, 0] in rows of 2; three deferred updates, then a read:
    #
    #   after the deferred updates (leaves only):   [2, 0 | 0, 3 | 1]   ancestors still [0, 0, 0], total 0 (stored)
    #   after the read (one batched recomputation): rows [2, 3, 1], total 6, min 1
    tree = SumTree(5, branching=2)
    tree.update(np.array([0]), np.array([2.0]), defer=True)
    tree.update(np.array([3]), np.array([3.0]), defer=True)
    tree.update(np.array([4, 0]), np.array([1.0, 2.0]), defer=True)  # leaf 0 written twice, same value
    np.testing.assert_array_equal(leaves_of(tree), [2, 0, 0, 3, 1])  # get reads the leaves at once
    np.testing.assert_array_equal(tree._values[1], [0, 0, 0])  # ancestors not recomputed yet
    assert tree.total == 6.0  # the read recomputes them
    np.testing.assert_array_equal(tree._values[1], [2, 3, 1])
    np.testing.assert_array_equal(tree._prefix[1], [0, 2, 5, 6])
    assert tree.min == 1.0
    assert tree._pending == []
    np.testing.assert_array_equal(tree.query(np.array([0.0, 1.9, 2.0, 4.9, 5.0, 5.9])), [0, 0, 3, 3, 4, 4])


@pytest.mark.parametrize("read", ["total", "min", "query", "update", "pickle"])
def test_every_read_sees_deferred_updates(read: str) -> None:
    rng = np.random.default_rng(3)
    capacity = 500
    tree = SumTree(capacity, branching=4, max_root_children=8)
    reference = SumTree(capacity, branching=4, max_root_children=8)
    leaves = np.zeros(capacity)
    for _ in range(30):
        indices = rng.integers(0, capacity, size=int(rng.integers(1, 5)))
        values = rng.integers(1, 9, size=indices.size) / 4
        tree.update(indices, values, defer=True)
        leaves[indices] = values
    reference.update(np.arange(capacity), leaves)
    if read == "total":
        assert tree.total == leaves.sum()
    elif read == "min":
        assert tree.min == leaves[leaves > 0].min()
    elif read == "query":
        prefix_sums = np.concatenate([np.cumsum(leaves), rng.uniform(0, leaves.sum(), size=50)])
        np.testing.assert_array_equal(tree.query(prefix_sums), reference_query(leaves, prefix_sums))
    elif read == "update":
        # A plain update recomputes the pending leaves' ancestors along with its own
        tree.update(np.array([7]), np.array([leaves[7]]))
    else:
        tree = pickle.loads(pickle.dumps(tree))
    assert_same_structure(tree, reference)
    check_against_reference(tree, leaves, rng.uniform(0, leaves.sum(), size=20))


def test_many_deferred_updates_are_flushed_in_bounded_batches() -> None:
    tree = SumTree(3000, branching=8)
    for index in range(2500):
        tree.update(np.array([index]), np.array([1.0]), defer=True)
        assert len(tree._pending) < 1024  # flushed when the list reaches _MAX_PENDING
    assert tree.total == 2500.0
    check_against_reference(tree, np.r_[np.ones(2500), np.zeros(500)], np.linspace(0, 2499.5, 50))


def test_deferred_update_rejects_bad_input_and_writes_nothing() -> None:
    tree = SumTree(10, branching=4)
    tree.update(np.array([1]), np.array([1.0]), defer=True)
    with pytest.raises(ValueError, match="got nan"):
        tree.update(np.array([2, 3]), np.array([2.0, np.nan]), defer=True)
    with pytest.raises(IndexError, match="leaf index 10 is out of range"):
        tree.update(np.array([2, 10]), np.array([2.0, 3.0]), defer=True)
    np.testing.assert_array_equal(leaves_of(tree), [0, 1] + [0] * 8)
    assert tree.total == 1.0


def test_unpickling_a_tree_saved_before_the_deferred_updates() -> None:
    # Earlier versions stored each internal row's sum in the last column of its prefix sums, and had no
    # pending list or cached minimum: such a pickle still loads and answers the same queries
    tree = SumTree(100, branching=4, max_root_children=2)
    rng = np.random.default_rng(4)
    tree.update(np.arange(100), rng.integers(0, 5, size=100) / 2)
    state = pickle.loads(pickle.dumps(tree.__getstate__()))  # a deep copy: tree keeps its own arrays
    for level in range(1, len(state["_n_rows"])):
        state["_prefix"][level] = state["_prefix"][level].copy()
        state["_prefix"][level][:, -1] = state["_values"][level].sum(axis=1)
    del state["_pending"], state["_min"]
    old = SumTree.__new__(SumTree)
    old.__setstate__(state)
    assert_same_structure(old, tree)
    assert (old.total, old.min) == (tree.total, tree.min)
    prefix_sums = rng.uniform(0, tree.total, size=200)
    np.testing.assert_array_equal(old.query(prefix_sums), tree.query(prefix_sums))
