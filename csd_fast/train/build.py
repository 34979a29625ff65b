"""What a run is made of, built from its config: the model, the loss, the optimiser and the
numerics (precision, memory format, CUDA graphs)."""
from __future__ import annotations

import dataclasses

import torch

from ..archs import EDSRCSD, PRESETS
from ..checkpoint import load_checkpoint
from ..losses import CSDLoss, load_vgg19
from .config import ConfigError, TrainConfig
from .step import graph_supported


def build_model(cfg: TrainConfig) -> EDSRCSD:
    """The configured network: from its preset, or, for the csd and student stages, loaded
    from teacher_checkpoint (any file load_checkpoint reads) with the hyper-parameters the
    file carries (a csd_fast file all of them; BasicSR's its value range, EDSR-PyTorch's its
    mean). Model keys the config sets pin the rest; its structure must match the weights."""
    if not cfg.teacher_checkpoint or cfg.stage == "teacher":
        return EDSRCSD.from_preset(cfg.preset, cfg.scale, **cfg.model_kwargs())
    structure = {k: v for k, v in PRESETS[cfg.preset].items() if k != "res_scale"}
    try:
        model = load_checkpoint(cfg.teacher_checkpoint, dtype=torch.float32,
                                **{"scale": cfg.scale, **structure, **cfg.model_kwargs()})
    except (ValueError, TypeError) as err:
        raise ValueError(f"teacher_checkpoint {cfg.teacher_checkpoint}: {err} (config: preset "
                         f"{cfg.preset}, {cfg.model_kwargs()})") from None
    model.default_width = model.trained_widths = None  # this run decides both anew
    return model


def build_loss(cfg: TrainConfig, device: torch.device) -> CSDLoss:
    """teacher/student stages: plain L1 on the one output (CSDLoss with both lambdas 0)."""
    if cfg.stage != "csd":
        return CSDLoss(None, lambda_c=0.0, lambda_t=0.0)
    vgg = load_vgg19(cfg.vgg_weights, random_weights=cfg.random_vgg).to(device) if cfg.lambda_c else None
    return CSDLoss(vgg, cfg.lambda_c, cfg.lambda_t, cfg.neg_num, cfg.t_detach, cfg.exclude_self,
                   backend=None if cfg.loss_backend == "auto" else cfg.loss_backend,
                   # the global batch, not this process's part: every process then chunks the
                   # negatives as one process does, and computes the same features bit for bit
                   neg_chunk=cfg.neg_chunk or cfg.batch)


def build_optimizer(cfg: TrainConfig, model: EDSRCSD, device: torch.device, amp: str | None):
    """(Adam, its step-decay schedule, the fp16 gradient scaler, disabled unless amp is fp16)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.decay_every, cfg.decay_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    return optimizer, scheduler, scaler


@dataclasses.dataclass
class Numerics:
    """The run's precision, memory format and step execution, with "auto" settings resolved."""
    amp: str | None
    channels_last: bool
    cuda_graph: bool

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)

    def describe(self) -> str:
        return (f"{self.amp or 'fp32'} {'autocast' if self.amp else 'weights'}, "
                f"{'channels-last' if self.channels_last else 'NCHW'}, "
                f"{'CUDA-graph' if self.cuda_graph else 'eager'} steps")


def resolve_numerics(cfg: TrainConfig, device: torch.device, world_size: int) -> Numerics:
    """amp "auto" is bf16 on a CUDA device that has it; channels_last and cuda_graph None are
    on wherever they can be (CUDA; for graphs also one process and no fp16 loss scaling)."""
    cuda = device.type == "cuda"
    amp = cfg.amp
    if amp == "auto":
        amp = "bf16" if cuda and torch.cuda.is_bf16_supported() else None
    channels_last = cuda if cfg.channels_last is None else cfg.channels_last
    why_not = graph_supported(device, world_size, amp)
    if cfg.cuda_graph and why_not:
        raise ConfigError(f"cuda_graph: cannot be on here: {why_not} (cuda_graph=false runs eagerly)")
    cuda_graph = why_not is None if cfg.cuda_graph is None else cfg.cuda_graph
    return Numerics(amp, channels_last, cuda_graph)
