"""Which cuDNN engine takes each graph the CUDA conv ops build, asked without a GPU.

cuDNN plans for an H200 (sm_90) and an A100 (sm_80) described by their properties, so a
CPU machine learns whether a graph would land on a precompiled engine or on one that
cuDNN compiles with NVRTC at its first call (seconds per shape, and inference meets
every image size), and how much workspace it needs (a large one is a staging copy).
Every forward graph EDSR and EDSR-baseline build at x2/x3/x4, widths 0.25/0.3/0.5/0.6/1,
bf16 and fp16, at the inference, training, odd and 4K-output shapes must get a
precompiled engine with at most 64 MB of workspace, or be routed to ATen by the ops' own
rule (a channel count not a multiple of 8, a tensor of 2^31 or more elements). The
training-only fused dgrad + ReLU backward is run-time compiled by design (the op falls
back to the plain dgrad where compiling fails).
"""
import contextlib

import pytest
import torch

from csd_fast.archs.edsr_csd import PRESETS, upsample_factors
from csd_fast.ops import cudnn_engines

pytestmark = pytest.mark.skipif(
    not cudnn_engines.available(),
    reason="csd_fast was built without its CUDA kernels: the query needs cuDNN and the cuDNN "
           "frontend headers (not a GPU)")

MAX_WORKSPACE = 64 * 2**20
SHAPES = [  # (batch, LR height, LR width, training)
    (1, 270, 480, False),  # 480x270 -> 1920x1080 at x4
    (16, 48, 48, True),    # the CSD recipe's training batch at x4
    (1, 37, 53, False),    # odd sizes
    (3, 9, 11, True),
]
UHD = (2160, 3840)  # 4K outputs: the LR size is this over the scale
# 0.3 and 0.6 give channel counts that are not multiples of 8 (19 and 38 of 64, 76 and
# 153 of 256)
WIDTHS = (0.25, 0.3, 0.5, 0.6, 1.0)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def all_graphs():
    """Every distinct graph of the matrix, each with the configurations that build it."""
    graphs = {}
    for preset, cfg in PRESETS.items():
        for scale in (2, 3, 4):
            uhd = (1, UHD[0] // scale, UHD[1] // scale, False)
            for width in WIDTHS:
                for batch, h, w, training in SHAPES + [uhd]:
                    for g in cudnn_engines.model_graphs(cfg["n_feats"], width, upsample_factors(scale),
                                                        batch, h, w, training):
                        graphs.setdefault(g, f"{preset} x{scale} w{width} {batch}x{h}x{w}")
    return graphs


def odd_channels(g):
    return any(c != 3 and c % 8 for c in (g.c_in, g.k_out))


def elements(g):
    return g.n * max(g.c_in, g.k_out) * g.h * g.w


GRAPHS = all_graphs() if cudnn_engines.available() else {}


def describe(g):
    return f"{g.name} ({g.kind}, {g.epilogue}) {g.n}x{g.c_in}->{g.k_out} at {g.h}x{g.w}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", sorted(cudnn_engines.DEVICES))
def test_every_forward_graph_gets_a_precompiled_engine(device, dtype):
    forward = [g for g in GRAPHS if g.kind == "fprop"]
    assert len(forward) > 100  # the matrix really is enumerated
    problems = []
    for g in forward:
        choice = cudnn_engines.plan(device, g, DTYPES[dtype])
        if odd_channels(g) or elements(g) >= 2**31:
            if not choice.aten:
                problems.append(f"{describe(g)}: should go to ATen, planned {choice}")
            continue
        if choice.aten:
            problems.append(f"{describe(g)}: routed to ATen: {choice.aten}")
        elif choice.error:
            problems.append(f"{describe(g)}: no engine: {choice.error.splitlines()[0]}")
        elif choice.runtime_compiled:
            problems.append(f"{describe(g)}: run-time compiled engine {choice.engine}")
        elif choice.workspace > MAX_WORKSPACE:
            problems.append(f"{describe(g)}: workspace {choice.workspace / 2**20:.0f} MB")
    assert not problems, f"{len(problems)} of {len(forward)} graphs on {device} {dtype}:\n" + \
        "\n".join(problems[:20])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", sorted(cudnn_engines.DEVICES))
def test_training_dgrads(device, dtype):
    """The residual block's backward: conv2's dgrad with hidden's ReLU mask is offered only
    run-time-compiled engines (kept: training shapes are few and fixed); conv1's plain
    dgrad gets a precompiled one."""
    dgrads = [g for g in GRAPHS if g.kind == "dgrad"]
    assert dgrads
    for g in dgrads:
        choice = cudnn_engines.plan(device, g, DTYPES[dtype])
        if odd_channels(g):
            assert "multiple of 8" in choice.aten, (describe(g), choice)
            continue
        assert not choice.aten, (describe(g), choice)
        if g.epilogue == "relu-backward":
            assert choice.runtime_compiled and choice.engine.startswith("eng"), (describe(g), choice)
        else:
            assert not choice.error and not choice.runtime_compiled, (describe(g), choice)
            assert choice.workspace <= MAX_WORKSPACE, (describe(g), choice)


@pytest.mark.parametrize("channels", [64, 256])
def test_residual_epilogue_runs_on_the_conv_relu_engine(channels):
    """conv -> + residual -> + bias (the order the ops build) runs on the same precompiled
    fused engine as conv -> + bias -> ReLU on an H200; conv -> + bias -> + residual would
    get only run-time-compiled ones."""
    def engine(epilogue):
        g = cudnn_engines.ConvGraph("conv", "fprop", epilogue, 1, channels, channels, 270, 480)
        return cudnn_engines.plan("H200", g, torch.bfloat16)

    residual, relu = engine("residual+bias"), engine("bias+relu")
    assert not residual.runtime_compiled and residual.workspace <= 1024
    assert residual.engine.split("_")[0] == relu.engine.split("_")[0] == "eng41"


def test_model_graphs_mirror_the_network():
    graphs = cudnn_engines.model_graphs(256, 0.25, [2, 2], 1, 270, 480, training=True)
    names = [(g.name, g.c_in, g.k_out, g.h, g.w) for g in graphs]
    assert names == [
        ("head", 3, 64, 270, 480), ("block conv1", 64, 64, 270, 480),
        ("block conv2", 64, 64, 270, 480), ("upsampler x2", 64, 256, 270, 480),
        ("upsampler x2", 64, 256, 540, 960), ("tail", 64, 3, 1080, 1920),
        ("block conv2 dgrad", 64, 64, 270, 480), ("block conv1 dgrad", 64, 64, 270, 480)]
    x, w, side, y = graphs[2].tensors(torch.bfloat16)
    assert x.is_contiguous(memory_format=torch.channels_last) and side.shape == y.shape
    assert w.shape == (64, 64, 3, 3) and w.is_contiguous(memory_format=torch.channels_last)


def test_bad_queries_are_clear_errors():
    g = cudnn_engines.ConvGraph("x", "fprop", "bias", 1, 8, 8, 5, 5)
    with pytest.raises(RuntimeError, match="bfloat16 or float16"):
        cudnn_engines.plan("H200", g, torch.float32)
    with pytest.raises(RuntimeError, match="deviceVer"):
        cudnn_engines.plan({"deviceName": "no version"}, g, torch.bfloat16)
    x, w, _, y = g.tensors(torch.bfloat16)
    with pytest.raises(RuntimeError, match="residual goes with epilogue 2"):
        torch.ops.csd_fast.cudnn_engine("{}", "fprop", x, w, None, y, 2)
    with pytest.raises(RuntimeError, match="kind must be"):
        torch.ops.csd_fast.cudnn_engine("{}", "wgrad", x, w, None, y, 0)


def test_odd_widths_and_huge_tensors_go_to_aten():
    """The ops' routing rule as the query reports it: 19 channels (EDSR-baseline at 0.3)
    at 1080p, and an upsampler output of 2^31 elements, never reach cuDNN's planner; the
    image's 3 channels of the head and the tail do."""
    odd = cudnn_engines.ConvGraph("block", "fprop", "bias+relu", 1, 19, 19, 1080, 1920)
    assert "19 -> 19 channels" in cudnn_engines.plan("H200", odd, torch.bfloat16).aten
    huge = cudnn_engines.ConvGraph("upsampler", "fprop", "bias", 1, 256, 1024, 1088, 1984)
    assert "2^31" in cudnn_engines.plan("H200", huge, torch.bfloat16).aten
    head = cudnn_engines.ConvGraph("head", "fprop", "bias", 1, 3, 64, 1080, 1920)
    tail = cudnn_engines.ConvGraph("tail", "fprop", "bias", 1, 64, 3, 2160, 3840)
    for g in (head, tail):
        choice = cudnn_engines.plan("H200", g, torch.bfloat16)
        assert not choice.aten and not choice.error and choice.workspace <= MAX_WORKSPACE, choice


@contextlib.contextmanager
def deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def test_deterministic_mode_is_part_of_the_key_and_keeps_precompiled_engines():
    """Under torch.use_deterministic_algorithms(True) the ops plan with the
    non-deterministic engines deselected, under a key of their own (a plan made without
    the flag is never reused with it); every forward graph of a model still gets a
    precompiled engine."""
    graphs = cudnn_engines.model_graphs(64, 1.0, [2, 2], 16, 48, 48, training=True)
    plain = [cudnn_engines.graph_key(g, torch.bfloat16) for g in graphs]
    with deterministic():
        strict = [cudnn_engines.graph_key(g, torch.bfloat16) for g in graphs]
        choices = [cudnn_engines.plan("H200", g, torch.bfloat16) for g in graphs]
    assert all(a != b for a, b in zip(plain, strict))
    for g, choice in zip(graphs, choices):
        if g.kind == "fprop":
            assert choice.engine and not choice.runtime_compiled and not choice.error, (describe(g), choice)


def test_size_one_dims_do_not_split_plan_keys():
    """A batch of one (or a one-pixel row) has a stride that addresses nothing, which
    torch sets as the producer left it: the plan key must not depend on it."""
    g = cudnn_engines.ConvGraph("conv", "fprop", "bias", 1, 16, 16, 1, 9)
    x, w, side, y = g.tensors(torch.bfloat16)
    keys = {torch.ops.csd_fast.cudnn_graph_key("fprop", x, w, None, y, 0)}
    for n_stride, h_stride in [(999, 144), (16 * 9, 7), (1, 1)]:
        odd = torch.empty_strided(x.shape, (n_stride, 1, h_stride, 16), dtype=x.dtype, device="meta")
        keys.add(torch.ops.csd_fast.cudnn_graph_key("fprop", odd, w, None, y, 0))
    assert len(keys) == 1, keys
