"""Image I/O, SR dataset folders, training patches and MATLAB-compatible bicubic resizing."""
from .datasets import LAYOUTS, DatasetError, ImagePair, SRFolder, bicubic_lr, find_pairs, load_pair
from .images import IMAGE_SUFFIXES, ImageReadError, check_image, image_size, read_image, write_png
from .imresize import imresize
from .patches import PatchDataset, augment

__all__ = ["IMAGE_SUFFIXES", "LAYOUTS", "DatasetError", "ImagePair", "ImageReadError", "PatchDataset",
           "SRFolder", "augment", "bicubic_lr", "check_image", "find_pairs", "image_size", "imresize", "load_pair",
           "read_image", "write_png"]
