"""One switch between the optimized inference paths and the reference code they replace.

Several hot spots have a fast implementation next to the plain one it was derived from (same
parameters, same math, results equal within float rounding):

- sparse kernel maps: neighbours found with one sorted search per kernel column (x, y) instead of
  one per offset, and the maps of 2x2x2 stride-2 down-sampling read from the parent of each voxel
  (:mod:`~sam4d_core.modeling.sparse.kernel_map`);
- sparse convolution on CPU: one gather of all (input, output) pairs, per-offset matmuls into one
  buffer, one ``index_add_`` (:mod:`~sam4d_core.modeling.sparse.conv`, ``"packed"``);
- point <-> voxel bookkeeping of a sweep (devoxelization weights, the stride-4 row of every point,
  token positions) computed once per voxel instead of once per point
  (:mod:`~sam4d_core.modeling.sparse.voxelize`);
- values derived from the weights (and the calibration) only are cached in inference: the Hiera
  position embedding at the input size, the UMPE point MLP's first layer folded over its repeated
  input, the UMPE encodings of the image tokens for the last camera calibration seen;
- memory attention without a key mask when no object's memory is padded (e.g. one object).

The reference paths stay selectable so that tests can compare both (``with reference_paths():``)
and so that a suspected regression can be bisected without editing code.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class _PathChoice(threading.local):
    """Which implementations run, per thread.

    Thread-local, not a module global: the ROS node runs the tracker on a worker thread next to
    the executor's threads in one process, and a test or benchmark that switches to the reference
    paths on its own thread must not switch another thread's tracking midway. Passing the choice
    as an argument instead would thread it through every sparse-conv, kernel-map and voxelization
    call for a switch that only tests and bisection use.
    """

    reference: bool = False


_choice = _PathChoice()


def use_reference_paths() -> bool:
    """True inside :func:`reference_paths` on this thread: optimized code falls back to the
    reference code."""
    return _choice.reference


@contextmanager
def reference_paths(enabled: bool = True) -> Iterator[None]:
    """Runs the block on the reference implementations (``enabled=False``: the fast ones); only
    the calling thread is affected."""
    previous, _choice.reference = _choice.reference, enabled
    try:
        yield
    finally:
        _choice.reference = previous


def parameter_state(*tensors: torch.Tensor) -> tuple:
    """A key that changes whenever one of the (parameter) tensors is replaced or edited in place
    (storage, version counter, dtype, device): for caches of values derived from weights."""
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


def use_inference_caches() -> bool:
    """Values derived only from parameters (constant for a frozen model) may be cached: fast
    paths on and no gradient being recorded."""
    return not _choice.reference and not torch.is_grad_enabled()


__all__ = ["parameter_state", "reference_paths", "use_inference_caches", "use_reference_paths"]
