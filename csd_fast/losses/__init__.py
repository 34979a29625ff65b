from .csd_loss import LAYER_WEIGHTS, ContrastiveLoss, CSDLoss, draw_negative_sources, make_negatives
from .vgg import VGG19_FILE, VGG19Features, load_vgg19, torchvision_cache_path

__all__ = ["LAYER_WEIGHTS", "ContrastiveLoss", "CSDLoss", "draw_negative_sources", "make_negatives",
           "VGG19_FILE", "VGG19Features", "load_vgg19", "torchvision_cache_path"]
