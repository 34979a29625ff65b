from .edsr_csd import EDSRCSD, PRESETS, RGB_MEAN, upsample_factors

__all__ = ["EDSRCSD", "PRESETS", "RGB_MEAN", "upsample_factors"]
