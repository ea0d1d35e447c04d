"""Sparse 3D convolution in plain PyTorch (no custom CUDA build), with torchsparse's weight layout.

Public API: :class:`SparseTensor`, :func:`cat`, :class:`Conv3d`, :class:`BatchNorm`, :class:`ReLU`,
:func:`sparse_conv3d`, and the voxelization helpers of :mod:`.voxelize`.
"""

from sam4d_core.modeling.sparse.conv import (
    BatchNorm,
    Conv3d,
    ReLU,
    conv_impl,
    set_default_impl,
    sparse_conv3d,
)
from sam4d_core.modeling.sparse.tensor import SparseCache, SparseTensor, cat
from sam4d_core.modeling.sparse.voxelize import (
    devoxelize,
    devoxelize_weights,
    pool_points_to_voxels,
    sam4d_voxelize,
    voxel_to_point,
    voxelize,
    voxelize_grid,
)

__all__ = [
    "BatchNorm",
    "Conv3d",
    "ReLU",
    "SparseCache",
    "SparseTensor",
    "cat",
    "conv_impl",
    "devoxelize",
    "devoxelize_weights",
    "pool_points_to_voxels",
    "sam4d_voxelize",
    "set_default_impl",
    "sparse_conv3d",
    "voxel_to_point",
    "voxelize",
    "voxelize_grid",
]
