"""Image I/O, SR dataset folders, training patches and MATLAB-compatible bicubic resizing."""
from .datasets import LAYOUTS, DatasetError, ImagePair, SRFolder, bicubic_lr, find_pairs, load_pair
from .images import IMAGE_SUFFIXES, ImageReadError, image_size, read_image, write_png
from .patches import PatchDataset, augment

__all__ = ["IMAGE_SUFFIXES", "LAYOUTS", "DatasetError", "ImagePair", "ImageReadError", "PatchDataset",
           "SRFolder", "augment", "bicubic_lr", "find_pairs", "image_size", "load_pair", "read_image",
           "write_png"]

try:
    from .imresize import imresize
except ModuleNotFoundError as err:  # imresize.py is written separately; the rest works without it
    if err.name != f"{__name__}.imresize":
        raise
else:
    __all__.append("imresize")
