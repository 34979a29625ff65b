"""Image quality metrics of the SR evaluation protocol."""
from .psnr_ssim import batch_psnr, batch_ssim, psnr, quantize_uint8, rgb_to_y, ssim

__all__ = ["batch_psnr", "batch_ssim", "psnr", "quantize_uint8", "rgb_to_y", "ssim"]
