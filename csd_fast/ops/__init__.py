"""Python front of the torch.ops.csd_fast custom ops: wrappers, fake kernels, autograd,
and the plain-PyTorch reference of each op."""
from .contrastive_distance import contrastive_distance, contrastive_distance_reference
from .conv_pixel_shuffle import conv3x3_pixel_shuffle, conv3x3_pixel_shuffle_reference
from .residual_block import residual_block, residual_block_reference
from .sliced_conv3x3 import sliced_conv3x3, sliced_conv3x3_reference

__all__ = [
    "contrastive_distance",
    "contrastive_distance_reference",
    "conv3x3_pixel_shuffle",
    "conv3x3_pixel_shuffle_reference",
    "residual_block",
    "residual_block_reference",
    "sliced_conv3x3",
    "sliced_conv3x3_reference",
]
