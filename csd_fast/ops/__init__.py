"""Python front of the torch.ops.csd_fast custom ops: wrappers, fake kernels, autograd,
and the plain-PyTorch reference of each op."""
from .contrastive_distance import contrastive_distance, contrastive_distance_reference
from .conv_pixel_shuffle import conv3x3_pixel_shuffle, conv3x3_pixel_shuffle_reference
from .negative_sums import (contrastive_negative_sums, contrastive_negative_sums_reference,
                            negative_distance)
from .residual_block import residual_block, residual_block_reference
from .sliced_conv3x3 import sliced_conv3x3, sliced_conv3x3_reference
from .weight_cache import cached_weights, clear_weight_cache, cudnn_graph_stats, weight_cache_stats

__all__ = [
    "cached_weights",
    "clear_weight_cache",
    "cudnn_graph_stats",
    "weight_cache_stats",
    "contrastive_distance",
    "contrastive_distance_reference",
    "contrastive_negative_sums",
    "contrastive_negative_sums_reference",
    "negative_distance",
    "conv3x3_pixel_shuffle",
    "conv3x3_pixel_shuffle_reference",
    "residual_block",
    "residual_block_reference",
    "sliced_conv3x3",
    "sliced_conv3x3_reference",
]
