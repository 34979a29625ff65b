"""Python front of the torch.ops.csd_fast custom ops: wrappers, fake kernels, autograd,
and the plain-PyTorch reference of each op."""
from .contrastive_distance import contrastive_distance, contrastive_distance_reference

__all__ = ["contrastive_distance", "contrastive_distance_reference"]
