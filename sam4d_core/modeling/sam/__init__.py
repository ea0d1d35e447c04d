"""SAM4D's SAM head: camera/LiDAR prompt encoders, the shared two-way mask decoder with its image
and sparse LiDAR upsampling heads, IoU / object-score heads and object pointers.

Layout mirrors SAM2 (``sam2/modeling/sam/``) and the official state dict
(``pure_model.head.sam.*`` = :class:`SAMHead`). The pointers' ego-pose encoder (top-level
``ego_pose_encoder.*``) is :mod:`sam4d_core.modeling.ego_pose_encoder`; the voxel hierarchy of the
LiDAR branch is :mod:`sam4d_core.modeling.sparse.hierarchy`.
"""

from sam4d_core.modeling.sam.mask_decoder import DecoderOutput, MaskDecoder
from sam4d_core.modeling.sam.prompt_encoder import (
    BOX_MAX_CORNER_LABEL,
    BOX_MIN_CORNER_LABEL,
    NEGATIVE_LABEL,
    NOT_A_POINT_LABEL,
    PAD_LABEL,
    POSITIVE_LABEL,
    PromptEmbeddings,
    PromptEncoder2D,
    PromptEncoder3D,
    bev_boxes_to_points_3d,
    boxes3d_to_points,
    boxes_to_points_2d,
    cross_modal_prompts,
)
from sam4d_core.modeling.sam.sam_head import (
    NO_OBJ_SCORE,
    HeadOutput,
    ImagePrompts,
    LidarPrompts,
    SAMHead,
    pointer_pos_enc,
    use_multimask,
)
from sam4d_core.modeling.sam.transformer import TwoWayAttentionBlock, TwoWayTransformer

__all__ = [
    "BOX_MAX_CORNER_LABEL",
    "BOX_MIN_CORNER_LABEL",
    "NEGATIVE_LABEL",
    "NOT_A_POINT_LABEL",
    "NO_OBJ_SCORE",
    "PAD_LABEL",
    "POSITIVE_LABEL",
    "DecoderOutput",
    "HeadOutput",
    "ImagePrompts",
    "LidarPrompts",
    "MaskDecoder",
    "PromptEmbeddings",
    "PromptEncoder2D",
    "PromptEncoder3D",
    "SAMHead",
    "TwoWayAttentionBlock",
    "TwoWayTransformer",
    "bev_boxes_to_points_3d",
    "boxes3d_to_points",
    "boxes_to_points_2d",
    "cross_modal_prompts",
    "pointer_pos_enc",
    "use_multimask",
]
