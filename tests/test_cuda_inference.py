"""EDSR on a GPU: the cuDNN graphs the fused model builds are exactly those the
deviceless engine test checks, and inference replayed from CUDA graphs equals eager
inference. Skipped without a GPU and the CUDA kernels."""
import pytest
import torch

import csd_fast
from csd_fast.inference import graph_cache, upscale
from csd_fast.ops import cudnn_engines

CUDA_READY = torch.cuda.is_available() and csd_fast.build_info()["cuda"]
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA GPU and CUDA kernels")]


def model(scale=4, n_feats=32, blocks=3):
    torch.manual_seed(0)
    return csd_fast.EDSRCSD(scale=scale, n_resblocks=blocks, n_feats=n_feats, res_scale=0.1).cuda()


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("width", [0.25, 1.0])
def test_model_builds_exactly_the_listed_graphs(scale, width):
    """The plan-cache keys a forward (and a training backward) adds are the keys of
    cudnn_engines.model_graphs: what CI plans without a GPU is what runs."""
    net = model(scale)
    batch, h, w = 2, 13 + scale, 21  # a shape no other test uses: every key is new here
    x = torch.rand(batch, 3, h, w, device="cuda") * 255
    before = set(torch.ops.csd_fast.cudnn_plan_keys())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        net(x.contiguous(memory_format=torch.channels_last), width).float().mean().backward()
    built = set(torch.ops.csd_fast.cudnn_plan_keys()) - before
    listed = {cudnn_engines.graph_key(g, torch.bfloat16)
              for g in cudnn_engines.model_graphs(32, width, net.factors, batch, h, w, training=True)}
    assert built == listed


@pytest.mark.parametrize("width", [0.25, 1.0])
def test_graph_replay_equals_eager(width):
    net = model().eval()
    x = torch.rand(1, 3, 40, 36, device="cuda") * 255
    options = dict(tile=16, autocast_dtype=torch.bfloat16)
    eager = upscale(net, x, width, cuda_graphs=False, **options)
    first = upscale(net, x, width, **options)
    second = upscale(net, x, width, **options)
    cache = graph_cache(net)
    assert cache.captures > 0 and len(cache) > 0
    assert torch.equal(first, eager) and torch.equal(second, eager)
    with torch.no_grad():
        net.tail.bias.add_(1.0)  # an in-place change: the next replay sees it
    changed = upscale(net, x, width, **options)
    torch.testing.assert_close(changed, upscale(net, x, width, cuda_graphs=False, **options),
                               rtol=0, atol=0)
    assert (changed - eager).abs().max() > 0.5
