"""What the contrastive-loss tests share: random feature maps and images, and the reference
code's formulation of the contrastive term, the oracle of the fused and streamed losses."""
import torch

WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


def features(shape, dtype, device, layout="contiguous"):
    """Random features in the requested memory layout (never zeros)."""
    if layout == "channels_last":
        return torch.randn(shape, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a non-contiguous view: every other column of a wider map
        b, c, h, w = shape
        return torch.randn(b, c, h, 2 * w, device=device).to(dtype)[..., ::2]
    return torch.randn(shape, device=device).to(dtype)


def source_for(batch, count, device):
    """Negative k made from batch item (k + 1) % batch, one negative from outside."""
    src = [(k + 1) % batch for k in range(count)]
    if count > 1:
        src[-1] = -1
    return torch.tensor(src, dtype=torch.int64, device=device)


def reference_contrastive(vgg, student, teacher, negatives, source=None):
    """The reference code's formulation: every anchor paired with every negative by
    repeating feature maps to B x K copies, then the ratio of batch means per layer."""
    b, k = student.size(0), negatives.size(0)
    loss = 0
    for w, fs, ft, fn in zip(WEIGHTS, vgg(student), vgg(teacher), vgg(negatives)):
        d_ts = (ft - fs).abs().mean()
        anchors = fs.repeat_interleave(k, dim=0)  # (B*K, ...): b-major
        negs = fn.repeat(b, 1, 1, 1)               # (B*K, ...): k-minor
        pair = (negs - anchors).abs().flatten(1).sum(1).view(b, k)
        if source is not None:
            pair = pair * (source.view(1, k) != torch.arange(b).view(b, 1))
        d_sn = pair.sum() / fs.numel()
        loss = loss + w * d_ts / (d_sn + 1e-7)
    return loss


def images(*shape):
    return (torch.rand(*shape, dtype=torch.float64) * 255)
