"""EDSR with shared-weight channel splitting (the CSSR-Net of CSD).

One set of weights serves every width ratio r in (0, 1]: at r the network runs
w = int(n_feats * r) channels and every conv uses the prefix weight[:out, :in] and
bias[:out] of its full-width weight (docs/method.md, section 1). Pixel shuffle maps input
channel c*s*s + j to output channel c, so the first s*s*w upsampler channels become
exactly the first w shuffled channels and the prefix stays valid through upsampling.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from .. import _extension

RGB_MEAN = (0.4488, 0.4371, 0.4040)

PRESETS = {
    # The paper's EDSR and EDSR-baseline (Lim et al. 2017), as CSD uses them.
    "edsr": dict(n_resblocks=32, n_feats=256, res_scale=0.1),
    "edsr-baseline": dict(n_resblocks=16, n_feats=64, res_scale=1.0),
}

BACKENDS = ("reference", "fused")


def upsample_factors(scale: int) -> list[int]:
    """Pixel-shuffle factors of the upsampler stages: log2(scale) x2 stages, or one x3."""
    if scale == 3:
        return [3]
    if isinstance(scale, int) and scale >= 2 and scale & (scale - 1) == 0:
        return [2] * int(math.log2(scale))
    raise ValueError(f"scale must be 3 or a power of two (2, 4, 8, ...), got {scale!r}")


def conv3x3(n_in: int, n_out: int) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, kernel_size=3, padding=1, bias=True)


def sliced_conv(x: torch.Tensor, conv: nn.Conv2d, n_out: int, n_in: int) -> torch.Tensor:
    """conv restricted to its first n_out filters over its first n_in input channels."""
    return F.conv2d(x, conv.weight[:n_out, :n_in], conv.bias[:n_out], padding=1)


class ResBlock(nn.Module):
    """x + res_scale * conv2(relu(conv1(x)))"""

    def __init__(self, n_feats: int, res_scale: float):
        super().__init__()
        self.conv1 = conv3x3(n_feats, n_feats)
        self.conv2 = conv3x3(n_feats, n_feats)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor, width: int) -> torch.Tensor:
        y = F.relu(sliced_conv(x, self.conv1, width, width))
        return x + self.res_scale * sliced_conv(y, self.conv2, width, width)


class EDSRCSD(nn.Module):
    """EDSR whose weights run at any width ratio; the CSD teacher is width 1.0.

    Images go in and come out as float tensors (N, 3, H, W) in [0, rgb_range] (NCHW
    or channels_last; the output keeps the input's memory format). Internally the
    network sees (x / rgb_range - rgb_mean) * img_range: the CSD and EDSR-PyTorch
    reference uses rgb_range = img_range = 255; BasicSR checkpoints use rgb_range = 1,
    img_range = 255.

    backend="reference" runs plain PyTorch ops and is the oracle of every test;
    backend="fused" runs every convolution through csd_fast's sliced-conv ops
    (channels-last, fused epilogues, conv + pixel shuffle in one op). The default,
    None, picks "fused" where the compiled kernels can run here, else "reference"
    with one warning that says why.
    """

    def __init__(
        self,
        scale: int = 4,
        n_resblocks: int = 16,
        n_feats: int = 64,
        res_scale: float = 1.0,
        rgb_range: float = 255.0,
        img_range: float | None = None,
        rgb_mean: tuple[float, float, float] = RGB_MEAN,
        backend: str | None = None,
    ):
        super().__init__()
        if n_resblocks < 0 or n_feats < 1:
            raise ValueError(f"need n_resblocks >= 0 and n_feats >= 1, got {n_resblocks}, {n_feats}")
        if rgb_range <= 0:
            raise ValueError(f"rgb_range must be positive, got {rgb_range}")
        if len(rgb_mean) != 3:
            raise ValueError(f"rgb_mean must hold 3 values, got {rgb_mean!r}")
        self.factors = upsample_factors(scale)
        self.scale = scale
        self.n_resblocks = n_resblocks
        self.n_feats = n_feats
        self.res_scale = float(res_scale)
        self.rgb_range = float(rgb_range)
        self.img_range = float(rgb_range if img_range is None else img_range)
        self.rgb_mean = tuple(float(m) for m in rgb_mean)
        self.backend = backend

        self.head = conv3x3(3, n_feats)
        self.body = nn.ModuleList(ResBlock(n_feats, self.res_scale) for _ in range(n_resblocks))
        self.body_conv = conv3x3(n_feats, n_feats)
        self.upsampler = nn.ModuleList(conv3x3(n_feats, s * s * n_feats) for s in self.factors)
        self.tail = conv3x3(n_feats, 3)
        # float64 so that a model moved to double keeps the shift exact
        mean = torch.tensor(self.rgb_mean, dtype=torch.float64).view(1, 3, 1, 1)
        self.register_buffer("shift", mean * self.img_range, persistent=False)
        self._tail_fold = None  # (key, (weight, bias)): see _folded_tail
        self._weights_generation = 0  # advanced by weights_changed()

    @classmethod
    def from_preset(cls, preset: str, scale: int = 4, **kwargs) -> "EDSRCSD":
        """EDSRCSD.from_preset("edsr", 4) is the paper's EDSR; "edsr-baseline" the small one."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        return cls(scale=scale, **{**PRESETS[preset], **kwargs})

    def config(self) -> dict:
        """The hyper-parameters that rebuild this model: EDSRCSD(**model.config())."""
        return dict(
            scale=self.scale,
            n_resblocks=self.n_resblocks,
            n_feats=self.n_feats,
            res_scale=self.res_scale,
            rgb_range=self.rgb_range,
            img_range=self.img_range,
            rgb_mean=list(self.rgb_mean),
        )

    def to_model_range(self, pixels: torch.Tensor, peak: float = 255.0) -> torch.Tensor:
        """Images with values in [0, peak] (255: 8-bit pixels, 1: a [0, 1] picture) as the
        network's input, in [0, rgb_range]: every caller goes through here, none assumes a range."""
        return pixels if peak == self.rgb_range else pixels * (self.rgb_range / peak)

    def from_model_range(self, output: torch.Tensor, peak: float = 255.0) -> torch.Tensor:
        """The network's output, in [0, rgb_range], as values in [0, peak]."""
        return output if peak == self.rgb_range else output / (self.rgb_range / peak)

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str | None) -> None:
        if value is None:
            value = _extension.default_backend()
        if value not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
        if value == "fused":
            _extension.require_extension()
        self._backend = value

    def channels(self, width: float) -> int:
        """Feature channels at width ratio `width`: int(n_feats * width), as the reference."""
        if isinstance(width, bool) or not isinstance(width, numbers.Real):
            raise TypeError(f"width must be a number in (0, 1], got {type(width).__name__}")
        if not 0.0 < width <= 1.0:
            raise ValueError(f"width must be in (0, 1], got {width}")
        channels = int(self.n_feats * width)
        if channels < 1:
            raise ValueError(
                f"width {width} gives int({self.n_feats} * {width}) = 0 channels; "
                f"the smallest width for n_feats={self.n_feats} is {1 / self.n_feats:.6g}"
            )
        return channels

    def sliced_convs(self, width: float = 1.0) -> list[tuple[nn.Conv2d, int, int]]:
        """Every conv with the (out, in) channel prefix it runs at this width."""
        w = self.channels(width)
        convs = [(self.head, w, 3)]
        for block in self.body:
            convs += [(block.conv1, w, w), (block.conv2, w, w)]
        convs.append((self.body_conv, w, w))
        convs += [(up, s * s * w, w) for up, s in zip(self.upsampler, self.factors)]
        convs.append((self.tail, 3, w))
        return convs

    def num_parameters(self, width: float = 1.0) -> int:
        """Trainable parameters the network uses at this width (weights and biases)."""
        return sum(o * i * 9 + o for _, o, i in self.sliced_convs(width))

    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor image batch, got {type(x).__name__}")
        if x.dim() != 4 or x.size(1) != 3:
            raise ValueError(f"expected a (N, 3, H, W) image batch, got shape {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"input batch is empty: shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(
                f"expected a floating-point image in [0, {self.rgb_range:g}], got {x.dtype}; "
                "convert it first, e.g. x.float()"
            )
        weight = self.head.weight
        if x.device != weight.device:
            raise ValueError(f"input is on {x.device} but the model is on {weight.device}")
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"input dtype {x.dtype} differs from the model's {weight.dtype}; "
                "run under torch.autocast or convert the model with .to(dtype)"
            )

    def forward(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        self.check_input(x)
        w = self.channels(width)
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        if self.backend == "fused":
            out = self._forward_fused(x, w)
            return out if channels_last else out.contiguous()
        y = x * (self.img_range / self.rgb_range) - self.shift.to(x.dtype)
        head = sliced_conv(y, self.head, w, 3)
        feat = head
        for block in self.body:
            feat = block(feat, w)
        feat = sliced_conv(feat, self.body_conv, w, w) + head
        for up, s in zip(self.upsampler, self.factors):
            feat = F.pixel_shuffle(sliced_conv(feat, up, s * s * w, w), s)
        out = sliced_conv(feat, self.tail, 3, w)
        out = (out + self.shift.to(out.dtype)) * (self.rgb_range / self.img_range)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    def weights_changed(self) -> None:
        """To be called after the weights changed in a way their version counters do
        not show: a training step replayed from a CUDA graph, a write through `.data`.
        Drops what is derived from the weights (the folded tail, the ops' packed
        prefixes); the trainer's step calls it after every update, eager or replayed."""
        self._weights_generation += 1
        self._tail_fold = None
        if _extension.available():
            torch.ops.csd_fast.clear_weight_cache()

    def _forward_fused(self, x: torch.Tensor, w: int) -> torch.Tensor:
        """The same network through csd_fast's ops, channels-last from head to tail.

        The tail's mean shift and output scale are folded into its bias and weight
        (exact: they act after the last conv). The head's are not: zero padding of the
        shifted image differs from zero padding of the raw one at the border.
        """
        from .. import ops

        params = _ParamCast(x)
        y = torch.sub(x * (self.img_range / self.rgb_range), self.shift.to(params.dtype))
        y = y.to(params.dtype, memory_format=torch.channels_last)
        head = ops.sliced_conv3x3(y, *params(self.head), w, 3)
        feat = head
        for block in self.body:
            feat = ops.residual_block(feat, *params(block.conv1), *params(block.conv2), w,
                                      self.res_scale)
        feat = ops.sliced_conv3x3(feat, *params(self.body_conv), w, w, residual=head)
        for up, s in zip(self.upsampler, self.factors):
            feat = ops.conv3x3_pixel_shuffle(feat, *params(up), w, w, s)
        return ops.sliced_conv3x3(feat, *self._folded_tail(params, x), 3, w)

    def _folded_tail(self, params: "_ParamCast", x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tail's weight and bias with the mean shift and output scale folded in. At
        inference (no autograd, the ops' weight cache on) they are kept and reused until a
        weight or the shift changes (a new version, storage or weights generation), so
        that the conv op finds them in its cache; never
        inside a CUDA-graph capture, which must record the fold itself."""
        from ..ops.weight_cache import weights_cached

        weight, bias = params(self.tail)
        scale_out = self.rgb_range / self.img_range

        def fold() -> tuple[torch.Tensor, torch.Tensor]:
            folded_bias = bias[:3] + self.shift.view(3).to(bias.dtype)
            if scale_out == 1.0:
                return weight, folded_bias
            return weight[:3] * scale_out, folded_bias * scale_out

        keep = (weights_cached() and not torch.is_grad_enabled() and not weight.is_inference()
                and not (x.is_cuda and torch.cuda.is_current_stream_capturing()))
        if not keep:
            self._tail_fold = None
            return fold()
        key = (weight.data_ptr(), weight._version, bias.data_ptr(), bias._version,
               self.shift.data_ptr(), scale_out, self._weights_generation)
        if self._tail_fold is None or self._tail_fold[0] != key:
            # ordinary tensors, not inference ones: the ops' cache keys on their version
            with torch.inference_mode(False), torch.no_grad():
                self._tail_fold = (key, fold())
        return self._tail_fold[1]


class _ParamCast:
    """A conv's (weight, bias) for the fused ops, which run in the input's dtype or
    autocast's where autocast is on (custom ops get no autocast of their own). float32
    parameters of a bfloat16/float16 run go in as they are: the ops cast only the prefix
    they read, and return its gradient in float32."""

    def __init__(self, x: torch.Tensor):
        device = x.device.type
        if torch.is_autocast_enabled(device):
            self.dtype = torch.get_autocast_dtype(device)
        else:
            self.dtype = x.dtype

    def __call__(self, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
        if conv.weight.dtype == torch.float32 and self.dtype in (torch.bfloat16, torch.float16):
            return conv.weight, conv.bias
        return conv.weight.to(self.dtype), conv.bias.to(self.dtype)
