"""Inference without per-call host work: packed weights kept and invalidated by every
kind of weight change, and the CUDA-graph cache's logic (capture on second sight, LRU,
keys, no aliasing), exercised on the CPU with a stand-in for the capture."""
import pytest
import torch

import csd_fast
from csd_fast import ops
from csd_fast.cuda_graphs import GraphCache
from csd_fast.inference import graph_cache, upscale

D = torch.float64


def tiny(seed=0, backend="fused"):
    torch.manual_seed(seed)
    return csd_fast.EDSRCSD(scale=2, n_resblocks=2, n_feats=12, backend=backend).to(D).eval()


def reference_output(model, x, width):
    ref = tiny(backend="reference")
    ref.load_state_dict(model.state_dict())
    ref.shift = model.shift.clone()  # not in the state dict, and rounded by a dtype round trip
    with torch.no_grad():
        return ref.to(x.dtype)(x, width)


def image(h=19, w=23):
    return torch.rand(1, 3, h, w, dtype=D) * 255


def test_inference_packs_each_weight_once_per_call():
    model, x = tiny(), image()
    with ops.cached_weights():  # an enclosing block keeps the counts readable
        ops.clear_weight_cache()
        sr = upscale(model, x, 0.5, tile=8, ensemble=True)
        stats = ops.weight_cache_stats()
    # head, 2 blocks x 2 convs, body conv, upsampler, tail: weight and bias each
    assert stats["misses"] == stats["entries"] == 16, stats
    assert stats["hits"] == 16 * (8 * 9 - 1), stats  # 8 ensemble passes x 9 tiles
    plain = upscale(model, x, 0.5, ensemble=True)
    torch.testing.assert_close(sr, plain, rtol=1e-6, atol=1e-4)


def changes():
    """Ways a model's weights change between two inference calls."""
    def optimizer_step(model):
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        model(image(8, 8), 0.5).square().mean().backward()
        opt.step()

    def load_state_dict(model):
        model.load_state_dict(tiny(seed=5).state_dict())

    def move(model):
        # new storage for the same Parameter objects; the allocator may hand the float64
        # weights their old addresses back
        model.to(torch.float32).to(D)

    def assign_data(model):
        for p in model.parameters():
            p.data = p.data * 1.5

    def copy_under_no_grad(model):
        with torch.no_grad():
            model.tail.bias.add_(3.0)
            model.body[0].conv2.weight.mul_(-1)

    return [optimizer_step, load_state_dict, move, assign_data, copy_under_no_grad]


@pytest.mark.parametrize("change", changes(), ids=lambda f: f.__name__)
def test_cached_packs_follow_every_weight_change(change):
    model, x = tiny(), image()
    with ops.cached_weights():
        before = upscale(model, x, 0.5)
        with torch.no_grad():
            first = model(x, 0.5)
        change(model)
        with torch.no_grad():
            after = model(x, 0.5)  # served from the cache where nothing changed
        torch.testing.assert_close(after, reference_output(model, x, 0.5), rtol=1e-9, atol=1e-7)
        # the change did change the output, by more than the tolerance above (the dtype
        # round trip only by float32 rounding)
        assert (after - first).abs().max() > 1e-6
        again = upscale(model, x, 0.5)
    torch.testing.assert_close(before, first.float(), rtol=0, atol=0)
    torch.testing.assert_close(again, after.float(), rtol=0, atol=0)


def stub_capture(log):
    """A CPU stand-in for a CUDA-graph capture with the same contract: static buffers,
    the forward recorded once, a copy returned per replay."""
    def capture(forward, x, pool):
        static_in = x.clone()
        static_out = forward(static_in)
        log.append(tuple(x.shape))

        def replay(batch):
            static_in.copy_(batch)
            static_out.copy_(forward(static_in))
            return static_out.clone()
        return replay
    return capture


def cpu_cache(log, **kwargs):
    cache = GraphCache(capture=stub_capture(log), **kwargs)
    cache.device_types = {"cpu"}
    return cache


def test_graph_cache_captures_on_second_sight_and_replays():
    log = []
    cache = cpu_cache(log)
    forward = lambda t: t * 2 + 1  # noqa: E731
    x = torch.randn(2, 3)
    with torch.inference_mode():
        outs = [cache(forward, x + i) for i in range(4)]
    assert log == [(2, 3)] and cache.captures == 1 and cache.replays == 3
    for i, out in enumerate(outs):
        torch.testing.assert_close(out, (x + i) * 2 + 1)
    assert outs[2].data_ptr() != outs[3].data_ptr()  # never the static buffer itself


def test_graph_cache_keys_capacity_and_autograd():
    log = []
    cache = cpu_cache(log, capacity=2)
    forward = lambda t: t + 1  # noqa: E731
    with torch.inference_mode():
        for shape in [(1, 2), (1, 3), (1, 4)]:
            for _ in range(2):
                cache(forward, torch.zeros(shape))
        assert len(cache) == 2 and log == [(1, 2), (1, 3), (1, 4)]
        cache(forward, torch.zeros(1, 2))  # evicted: seen before, so captured again
        assert log[-1] == (1, 2) and len(cache) == 2
        cache(forward, torch.zeros(1, 4), key="width 0.5")  # another key: its own graph
        cache(forward, torch.zeros(1, 4), key="width 0.5")
        assert log[-1] == (1, 4) and cache.captures == 5
        cache(forward, torch.zeros(4, 1, 2).transpose(0, 1))  # new strides: first sight
        assert cache.captures == 5
    with torch.enable_grad():  # a forward that builds a graph for autograd stays eager
        cache(forward, torch.zeros(1, 2))
        cache(forward, torch.zeros(1, 2))
    assert cache.captures == 5
    with pytest.raises(ValueError, match="capacity"):
        GraphCache(capacity=0)


def test_upscale_tiles_of_one_size_share_one_graph():
    model, x = tiny(), image(28, 28)  # 4 x 4 tiles of 3 x 3 shapes (edges 10 and 6, inside 12)
    log = []
    cache = graph_cache(model)
    cache._capture = stub_capture(log)
    cache.device_types = {"cpu"}
    eager = upscale(model, x, 0.5, tile=8, overlap=2, cuda_graphs=False)
    assert cache.captures == 0
    first = upscale(model, x, 0.5, tile=8, overlap=2)
    assert (1, 3, 12, 12) in log  # the interior tiles, seen four times
    second = upscale(model, x, 0.5, tile=8, overlap=2)
    assert len(log) == len(set(log)) == cache.captures == 9
    assert cache.replays == 2 * 16 - 9  # every tile but each shape's first sight
    torch.testing.assert_close(first, eager, rtol=0, atol=0)
    torch.testing.assert_close(second, eager, rtol=0, atol=0)
    model.to(torch.float32).to(D)  # moved weights: a new key, so new graphs
    upscale(model, x, 0.5, tile=8, overlap=2)
    upscale(model, x, 0.5, tile=8, overlap=2)
    assert cache.captures == 18
