"""Training configuration: recipe defaults, YAML loading, key=value overrides, validation."""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

STAGES = ("teacher", "csd", "student")
PRESET_NAMES = ("edsr-baseline", "edsr")
AMP_MODES = ("auto", None, "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
NEGATIVE_SOURCES = ("batch", "dataset")


class ConfigError(ValueError):
    """A bad training configuration; the message names the offending key."""


def option(default, help: str):
    """A config field with its one-line meaning, shown by `csd-fast train --help`."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every hyper-parameter of a run; the defaults are the CSD reference recipe (x4, EDSR-baseline).

    stage: "teacher" trains width 1 with L1 only; "csd" the joint CSD loss (student at
    `width`, teacher at 1.0), starting from teacher_checkpoint; "student" L1 at `width` only.
    n_resblocks / n_feats / res_scale override the preset (tests use tiny models).
    Each field's help is its line in `csd-fast train --help` (describe_keys).
    """
    stage: str = option("csd", "teacher: width 1, L1 | csd: joint CSD loss | student: L1 at width")
    scale: int = option(4, "upscaling factor: 2, 3 or 4")
    preset: str = option("edsr-baseline", "edsr-baseline (16 blocks, 64 features) or edsr (32, 256)")
    n_resblocks: int | None = option(None, "residual blocks, overriding the preset's")
    n_feats: int | None = option(None, "feature channels at width 1, overriding the preset's")
    res_scale: float | None = option(None, "residual scaling, overriding the preset's")
    rgb_range: float | None = option(None, "pixel values the network works in, [0, rgb_range]: 255 (the "
                                           "reference) or 1 (BasicSR); none: the teacher_checkpoint's, else 255")
    width: float = option(0.25, "the student's width ratio in (0, 1] (csd and student stages)")
    # loss
    neg_num: int = option(10, "negatives per anchor (K); <= batch with negatives=batch")
    negatives: str = option("batch", "where the negatives come from: batch (the reference: neg_num "
                                     "items of the batch) or dataset (neg_num LR patches drawn from "
                                     "the training set each step, any neg_num)")
    neg_chunk: int | None = option(None, "negatives per VGG19 pass of the contrastive loss, which "
                                         "streams them: memory of one chunk whatever neg_num; none: "
                                         "batch (over all processes); the loss equals to rounding")
    lambda_c: float = option(200.0, "weight of the contrastive term (0: none, and no VGG19)")
    lambda_t: float = option(1.0, "weight of the teacher's L1 term (csd stage)")
    t_detach: bool = option(True, "stop gradients through the teacher as the contrastive positive")
    exclude_self: bool = option(False, "keep an anchor's own upsampled input out of its negatives "
                                       "(negatives=dataset: no negative from any batch item's image)")
    loss_backend: str = option("auto", "contrastive distance: fused (csd_fast's op), reference, or "
                                       "auto (fused where the compiled kernels run)")
    # data
    train_data: str | None = option(None, "training dataset folder (required; any supported layout)")
    val_data: str | None = option(None, "validation dataset folder; none: no validation, no best.*")
    lr_patch: int = option(48, "LR patch side (the HR patch is scale times larger)")
    batch: int = option(16, "patches per iteration, over all processes")
    augment: bool = option(True, "random flips and transposes of the patches")
    num_workers: int = option(0, "DataLoader worker processes")
    # optimiser and schedule
    lr: float = option(1e-4, "Adam learning rate")
    betas: tuple[float, float] = option((0.9, 0.999), "Adam betas, as b1,b2")
    eps: float = option(1e-8, "Adam eps")
    decay_every: int = option(200_000, "iterations between learning-rate decays")
    decay_gamma: float = option(0.1, "learning-rate factor at each decay, in (0, 1]")
    iterations: int = option(400_000, "total iterations of the run")
    grad_clip: float | None = option(None, "clip the total gradient norm to this; none: no clipping")
    # numerics and device
    amp: str | None = option("auto", "mixed precision: auto (bf16 on CUDA, none on CPU), none, bf16 "
                                     "or fp16 (fp16 with a grad scaler)")
    channels_last: bool | None = option(None, "channels-last weights and inputs; none: on for CUDA, "
                                              "off on CPU")
    cuda_graph: bool | None = option(None, "replay each step from a CUDA graph; none: wherever it can "
                                           "(CUDA, one process, amp not fp16)")
    device: str = option("auto", "auto (CUDA when available), cpu or cuda")
    seed: int = option(0, "seed of every random draw: weights, patches, negatives")
    deterministic: bool = option(False, "bitwise-repeatable runs on CUDA too (slower convolutions)")
    # bookkeeping
    val_every: int = option(1000, "iterations between validations (and best.* updates)")
    checkpoint_every: int = option(1000, "iterations between writes of last.pt")
    log_every: int = option(100, "iterations between log.csv rows")
    out_dir: str = option("runs/csd", "folder for config.yaml, log.csv, last.pt, best.*")
    teacher_checkpoint: str | None = option(None, "weights the csd/student stage starts from")
    vgg_weights: str | None = option(None, "torchvision's vgg19-dcbb9e9d.pth; none: its cache path")
    random_vgg: bool = option(False, "untrained VGG19 for the contrastive loss (tests, demos only)")
    progress: bool = option(True, "show a progress bar")
    tensorboard: bool = option(True, "also log to <out_dir>/tensorboard/ when tensorboard is installed")

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)  # YAML-friendly
        return d

    def model_kwargs(self) -> dict:
        """The model hyper-parameters this config sets, beyond its preset."""
        return {k: v for k, v in (("n_resblocks", self.n_resblocks), ("n_feats", self.n_feats),
                                  ("res_scale", self.res_scale), ("rgb_range", self.rgb_range))
                if v is not None}


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _as_text(value: object) -> str:
    """A default as it would be written in a YAML file or a key=value override."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(_as_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def describe_keys() -> str:
    """Every config key with its default and meaning, from the TrainConfig fields themselves."""
    width = max(map(len, FIELDS)) + 2
    defaults = [_as_text(f.default) for f in FIELDS.values()]
    default_width = max(map(len, defaults)) + 2
    lines = ["config keys (in the --config YAML file or as KEY=VALUE):",
             f"  {'key':<{width}}{'default':<{default_width}}meaning"]
    for (name, f), default in zip(FIELDS.items(), defaults):
        lines.append(f"  {name:<{width}}{default:<{default_width}}{f.metadata.get('help', '')}")
    return "\n".join(lines)


def _optional(hint) -> tuple[object, bool]:
    """(inner type, whether None is allowed) of a `T | None` hint."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return inner[0], type(None) in args
    return hint, False


def _coerce(key: str, value: object):
    """Convert value (from YAML or a command-line string) to the field's type, or raise ConfigError."""
    hint, nullable = _optional(_HINTS[key])
    text = isinstance(value, str)
    if value is None or (text and nullable and value.strip().lower() in ("none", "null", "~", "")):
        if nullable:
            return None
        raise ConfigError(f"{key}: must not be empty (expected {getattr(hint, '__name__', hint)})")
    bad = ConfigError(f"{key}: expected {getattr(hint, '__name__', str(hint))}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if text and value.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.strip().lower() in ("true", "yes", "1", "on")
        raise bad
    if hint is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if text:
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                raise bad from None
            if f.is_integer():
                return int(f)
        raise bad
    if hint is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if text:
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if hint is str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        raise bad
    if typing.get_origin(hint) is tuple:  # betas
        if text:
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or len(value) != len(typing.get_args(hint)):
            raise ConfigError(f"{key}: expected {len(typing.get_args(hint))} numbers, got {value!r}")
        return tuple(_coerce_float(key, v) for v in value)
    raise bad


def _coerce_float(key: str, v: object) -> float:
    try:
        if isinstance(v, bool):
            raise ValueError
        return float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected numbers, got {v!r}") from None


def validate(cfg: TrainConfig) -> None:
    """Coerce every field in place, then check ranges; errors name the key."""
    for key in FIELDS:
        setattr(cfg, key, _coerce(key, getattr(cfg, key)))

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {why}, got {getattr(cfg, key)!r}")

    need(cfg.stage in STAGES, "stage", f"must be one of {STAGES}")
    need(cfg.preset in PRESET_NAMES, "preset", f"must be one of {PRESET_NAMES}")
    need(cfg.scale in (2, 3, 4), "scale", "must be 2, 3 or 4")
    need(0.0 < cfg.width <= 1.0, "width", "must be in (0, 1]")
    need(cfg.amp in AMP_MODES, "amp", f"must be one of {AMP_MODES}")
    need(cfg.device in DEVICES, "device", f"must be one of {DEVICES}")
    need(cfg.loss_backend in ("auto", "reference", "fused"), "loss_backend",
         "must be 'auto', 'reference' or 'fused'")
    for key in ("lr_patch", "batch", "iterations", "decay_every", "val_every", "checkpoint_every",
                "log_every", "neg_num"):
        need(getattr(cfg, key) >= 1, key, "must be >= 1")
    for key in ("n_resblocks",):
        need(getattr(cfg, key) is None or getattr(cfg, key) >= 0, key, "must be >= 0")
    need(cfg.n_feats is None or cfg.n_feats >= 1, "n_feats", "must be >= 1")
    need(cfg.neg_chunk is None or cfg.neg_chunk >= 1, "neg_chunk", "must be >= 1 or none")
    need(cfg.rgb_range is None or cfg.rgb_range > 0, "rgb_range", "must be > 0")
    need(cfg.num_workers >= 0, "num_workers", "must be >= 0")
    need(cfg.lr > 0, "lr", "must be > 0")
    need(cfg.eps > 0, "eps", "must be > 0")
    need(0 < cfg.decay_gamma <= 1, "decay_gamma", "must be in (0, 1]")
    need(all(0 <= b < 1 for b in cfg.betas), "betas", "must both be in [0, 1)")
    need(cfg.grad_clip is None or cfg.grad_clip > 0, "grad_clip", "must be > 0 or None")
    need(cfg.lambda_c >= 0, "lambda_c", "must be >= 0")
    need(cfg.lambda_t >= 0, "lambda_t", "must be >= 0")
    need(cfg.seed >= 0, "seed", "must be >= 0")
    need(cfg.negatives in NEGATIVE_SOURCES, "negatives", f"must be one of {NEGATIVE_SOURCES}")
    if cfg.stage == "csd" and cfg.lambda_c > 0 and cfg.negatives == "batch":
        # the reference draws the K negatives from the batch itself
        need(cfg.neg_num <= cfg.batch, "neg_num", f"must be <= batch ({cfg.batch}) with negatives=batch, "
             "where the negatives are items of the batch (negatives=dataset draws any number from "
             "the training set)")


def parse_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key=value")
    if key not in FIELDS:
        raise ConfigError(f"{key}: unknown config key; known keys: {', '.join(FIELDS)}")
    return key, value.strip()


def load_config(path: str | os.PathLike | None = None, overrides: typing.Iterable[str] = (),
                **values) -> TrainConfig:
    """Recipe defaults, updated by the YAML file at path, then key=value overrides, then values."""
    merged: dict[str, object] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read the config: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
        merged.update(data)
    for item in overrides:
        key, value = parse_override(item)
        merged[key] = value
    merged.update(values)
    unknown = sorted(set(merged) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config key; known keys: {', '.join(FIELDS)}")
    return TrainConfig(**merged)


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    from .._atomic import atomic_write_bytes
    atomic_write_bytes(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
