"""`csd-fast upscale` on a video: the whole pipeline (decode, network, encode, file written)
against the network alone on the same, already decoded frames, in the same batches.

An EDSR-baseline student at width 0.25 on a clip of random frames (FFV1 in Matroska):
x2 on 96 frames of 160x120, and (timed runs only) x4 on 48 frames of 480x270, the
1080p case; both longer than libx264's 40-frame lookahead, so encoding runs alongside
the network rather than all at the end. pipeline / network near 1 means decoding and
encoding are hidden behind the network. On a CPU they need cores of their own: with torch
on every core they slow its parallel regions down; `threads1` leaves FFmpeg a core."""
import fractions

import numpy as np
import pytest
import torch

from csd_fast import EDSRCSD

from conftest import run_benchmark

av = pytest.importorskip("av")

BATCH = 4
CASES = {"160x120_x2": (96, (120, 160), 2), "480x270_x4": (48, (270, 480), 4)}  # frames, (h, w), scale


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    if request.param != "160x120_x2" and request.config.getoption("benchmark_disable"):
        pytest.skip("the 1080p case is for timed runs")
    return request.param


@pytest.fixture(scope="module")
def clip(tmp_path_factory, case):
    frames_n, (h, w), _ = CASES[case]
    path = tmp_path_factory.mktemp("video") / "clip.mkv"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=24)
        s.width, s.height, s.pix_fmt = w, h, "bgr0"
        for i in range(frames_n):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, 24)
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return path, frames


@pytest.fixture(scope="module")
def model(case):
    torch.manual_seed(0)
    return EDSRCSD.from_preset("edsr-baseline", scale=CASES[case][2]).eval()


@pytest.fixture(params=["all", "1"])
def torch_threads(request):
    """torch's CPU threads: every core, or one (a core left for decoding and encoding)."""
    before = torch.get_num_threads()
    torch.set_num_threads(before if request.param == "all" else 1)
    yield torch.get_num_threads()
    torch.set_num_threads(before)


@pytest.mark.parametrize("impl", ["network", "pipeline_libx264", "pipeline_ffv1"])
def test_video_pipeline(benchmark, model, clip, tmp_path, torch_threads, impl):
    from csd_fast.upscale import quantize, upscale_rgb
    from csd_fast.video import upscale_video

    path, frames = clip
    n = len(frames)
    device = torch.device("cpu")
    benchmark.group = (f"video_pipeline cpu EDSR-baseline x{model.scale} width0.25 "
                       f"{frames[0].shape[1]}x{frames[0].shape[0]} {n} frames torch threads {torch_threads}")
    benchmark.extra_info["impl"] = impl
    if impl == "network":
        batches = [torch.from_numpy(np.stack(frames[i:i + BATCH])).permute(0, 3, 1, 2).double() / 255
                   for i in range(0, n, BATCH)]

        def run():
            for rgb in batches:
                quantize(upscale_rgb(model, rgb, 0.25, device), 255).to(torch.uint8)
    else:
        codec = impl.split("_")[1]

        def run():
            summary = upscale_video(model, path, tmp_path / "out.mkv", 0.25, device=device, batch=BATCH,
                                    codec=codec, overwrite=True, progress=False)
            assert summary.frames == n
    run_benchmark(benchmark, run, device, rounds=3)
