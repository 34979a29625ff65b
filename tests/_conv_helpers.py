"""Plain-PyTorch pieces the conv-op tests share: the sliced conv, pixel shuffle written
out, and the three input layouts the ops must accept."""
import torch
import torch.nn.functional as F

CL = torch.channels_last


def conv(x, weight, bias, n_out, n_in):
    return F.conv2d(x[:, :n_in], weight[:n_out, :n_in], bias[:n_out], padding=1)


def shuffle(x, s):
    """Pixel shuffle written out: channel c*s*s + i*s + j goes to (c, h*s + i, w*s + j)."""
    n, c, h, w = x.shape
    x = x.reshape(n, c // (s * s), s, s, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c // (s * s), h * s, w * s)


def layout(x, kind):
    """The same values as NCHW-contiguous, channels_last or a non-contiguous view."""
    if kind == "nchw":
        return x.contiguous()
    if kind == "channels_last":
        return x.contiguous(memory_format=CL)
    wide = torch.randn(*x.shape[:3], x.shape[3] * 2, dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    return wide[..., ::2]
