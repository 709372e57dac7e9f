"""
Proportional prioritization (Schaul et al. 2016, https://arxiv.org/abs/1511.05952) on a
:class:`~sb3_dqn_ext.sum_tree.SumTree`: the two hot paths of the prioritized buffers, one compiled kernel call per batch
each, working on the tree's arrays. Imported by the buffers when they are built (it imports numba).
"""

import math

import numba
import numpy as np

from sb3_dqn_ext.sum_tree import SumTree, _query_kernel, _update_kernel


@numba.njit(cache=True)
def _sample_kernel(
    sums: np.ndarray, mins: np.ndarray, offsets: np.ndarray, branching: int, uniforms: np.ndarray, beta: float, batch_min: bool
) -> tuple[np.ndarray, np.ndarray]:
    """
    Stratified proportional sampling (Schaul et al. 2016, Appendix B.2.1) and the importance-sampling weights
    (Section 3.4), in one pass.

    Sample ``k`` of ``B = uniforms.size`` is the leaf at prefix sum ``(k + uniforms[k]) * total / B`` (one draw in each
    of ``B`` equal segments), see :func:`_query_kernel`. Its weight ``w_k = (N * P(k)) ** -beta``, divided by the
    largest weight, is ``(p_k / p_min) ** -beta``: ``p_min`` is the smallest positive leaf of the tree, or of the
    batch when ``batch_min``.

    :return: The leaves (``intp``) and the weights, float32 of shape ``(B, 1)``
    """
    batch_size = uniforms.size
    segment = sums[-1] / max(batch_size, 1)
    prefix_sums = np.empty(batch_size)
    for k in range(batch_size):
        prefix_sums[k] = (k + uniforms[k]) * segment
    leaves, priorities = _query_kernel(sums, offsets, branching, prefix_sums)
    p_min = mins[-1]
    if batch_min:
        p_min = math.inf
        for k in range(batch_size):
            p_min = min(p_min, priorities[k])
    weights = np.empty((batch_size, 1), dtype=np.float32)
    for k in range(batch_size):
        weights[k, 0] = (priorities[k] / p_min) ** -beta
    return leaves, weights


@numba.njit(cache=True)
def _priorities_kernel(
    sums: np.ndarray,
    mins: np.ndarray,
    offsets: np.ndarray,
    branching: int,
    capacity: int,
    leaves: np.ndarray,
    td_errors: np.ndarray,
    eps: float,
    alpha: float,
) -> float:
    """
    Set the leaves' priorities to ``(|td_error| + eps) ** alpha`` (Section 3.3, proportional variant), if every leaf
    is in ``[0, capacity)`` and every TD error finite; otherwise write nothing.

    :return: The largest ``|td_error| + eps`` (0 for an empty batch), or -1 when nothing was written
    """
    priorities = np.empty(td_errors.size)
    largest = 0.0
    for i in range(td_errors.size):
        raw = abs(td_errors[i]) + eps
        if not (0 <= leaves[i] < capacity and math.isfinite(raw)):
            return -1.0
        largest = max(largest, raw)
        priorities[i] = raw**alpha
    _update_kernel(sums, mins, offsets, branching, leaves, priorities)
    return largest


def sample(tree: SumTree, uniforms: np.ndarray, beta: float, batch_min: bool) -> tuple[np.ndarray, np.ndarray]:
    """
    Stratified sampling and importance weights (see :func:`_sample_kernel`); the tree's total must be positive.

    :param tree: The priorities
    :param uniforms: One draw in ``[0, 1)`` per sample, flat float64
    :param beta: Importance-sampling exponent
    :param batch_min: Normalize the weights by the batch's largest weight instead of the tree's
    :return: The leaf indices (``intp``) and the weights (float32, ``(batch_size, 1)``)
    """
    return _sample_kernel(tree._sums, tree._mins, tree._offsets, tree.branching, uniforms, beta, batch_min)


def set_priorities(tree: SumTree, leaves: np.ndarray, td_errors: np.ndarray, eps: float, alpha: float) -> float:
    """
    Set leaves to ``(|td_errors| + eps) ** alpha`` (see :func:`_priorities_kernel`).

    :param tree: The priorities
    :param leaves: Flat integer leaf indices
    :param td_errors: Flat float32 or float64 TD errors, one per leaf
    :param eps: Added to ``|td_errors|``
    :param alpha: Prioritization exponent
    :return: The largest ``|td_error| + eps``, or -1 when a leaf is out of range or a TD error not finite (nothing
        written)
    """
    return _priorities_kernel(
        tree._sums, tree._mins, tree._offsets, tree.branching, tree.capacity, leaves, td_errors, eps, alpha
    )
