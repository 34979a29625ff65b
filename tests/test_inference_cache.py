"""Inference without per-call host work: packed weights kept and invalidated by every
kind of weight change, and the CUDA-graph cache's logic (capture on second sight, LRU,
keys, no aliasing), exercised on the CPU with a stand-in for the capture."""
import pytest
import torch

import csd_fast
from csd_fast import ops
from csd_fast.cuda_graphs import GraphCache, replay_of, weights_key
from csd_fast.inference import graph_cache, release_graphs, upscale

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
    """A CPU stand-in for a CUDA-graph capture with the same contract (cuda_graphs.replay_of:
    static buffers, a copy returned per replay); the "graph" writes its output buffer
    whatever the grad mode of the replay, as a CUDA graph does."""
    def capture(forward, x, pool):
        def record(run):
            output = run()

            def replay():
                with torch.inference_mode():
                    output.copy_(run())
            return replay, output
        log.append(tuple(x.shape))
        return replay_of(forward, x, record)
    return capture


def cpu_cache(log, **kwargs):
    return GraphCache(capture=stub_capture(log), device_types=("cpu",), **kwargs)


def stub_model_cache(model, log):
    cache = graph_cache(model)
    cache._capture = stub_capture(log)
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
        strided = torch.zeros(2, 3)[:, :1].t()  # (1, 2), other strides: the same graph
        assert cache(forward, strided).equal(torch.ones(1, 2)) and cache.captures == 5
        cache(forward, torch.zeros(1, 2, dtype=D))  # another dtype: first sight
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
    cache = stub_model_cache(model, log)
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


def test_repeated_tiled_upscale_replays_every_graph():
    """40 x 36 at tile 16: nine tile shapes, one more than the cache's default capacity.
    The second call captures each shape once; from the third on, each is replayed."""
    model, x = tiny(), image(40, 36)
    log = []
    cache = stub_model_cache(model, log)
    eager = upscale(model, x, 0.5, tile=16, cuda_graphs=False)
    upscale(model, x, 0.5, tile=16)
    assert cache.captures == cache.replays == 0  # first sight of every shape
    upscale(model, x, 0.5, tile=16)
    assert cache.captures == cache.replays == 9 and len(set(log)) == 9
    for _ in range(2):
        out = upscale(model, x, 0.5, tile=16)
    assert cache.captures == 9 and cache.replays == 27 and len(cache) == 9
    torch.testing.assert_close(out, eager, rtol=0, atol=0)


def test_tiles_of_images_of_two_sizes_share_graphs():
    """Equal tile shapes cut from images of different widths (other strides) replay
    the same graphs."""
    model = tiny()
    small, wide = image(28, 28), image(28, 44)
    log = []
    cache = stub_model_cache(model, log)
    for _ in range(2):
        upscale(model, small, 0.5, tile=8, overlap=2)
    assert cache.captures == 9
    replays = cache.replays
    out = upscale(model, wide, 0.5, tile=8, overlap=2)  # 4 x 6 tiles, the same 3 x 3 shapes
    assert cache.captures == 9 and cache.replays == replays + 24
    torch.testing.assert_close(out, upscale(model, wide, 0.5, tile=8, overlap=2, cuda_graphs=False),
                               rtol=0, atol=0)


def test_validation_pattern_stops_capturing_after_its_second_round():
    """Five images at two widths (ten signatures, more than the default capacity), one
    working set per round as the trainer's validation opens: the second round captures
    each, later rounds replay them."""
    model = tiny()
    images = [image(10 + i, 12) for i in range(5)]
    log = []
    cache = stub_model_cache(model, log)
    captured = []
    for _ in range(4):
        with cache.working_set():
            for width in (0.5, 1.0):
                for x in images:
                    upscale(model, x, width)
        captured.append(cache.captures)
    assert captured == [0, 10, 10, 10] and cache.replays == 30


def test_graphs_replay_in_the_other_grad_mode():
    """A graph captured under inference mode replays under no_grad, and the other way."""
    forward = lambda t: t * 3  # noqa: E731
    for capture_mode, replay_mode in [(torch.inference_mode, torch.no_grad),
                                      (torch.no_grad, torch.inference_mode)]:
        cache = cpu_cache([])
        with capture_mode():
            cache(forward, torch.ones(2, 2))
            cache(forward, torch.ones(2, 2))
        assert cache.captures == 1
        with replay_mode():
            out = cache(forward, torch.full((2, 2), 2.0))
        assert cache.replays == 2 and out.equal(torch.full((2, 2), 6.0))


def test_release_graphs_frees_the_models_cache():
    model, x = tiny(), image(12, 12)
    cache = stub_model_cache(model, [])
    for _ in range(2):
        upscale(model, x, 0.5)
    assert len(cache) == 1
    release_graphs(model)
    assert len(cache) == 0 and graph_cache(model) is not cache
    release_graphs(tiny())  # a model without graphs: nothing to do


def test_weights_key_sees_dtype_and_shape_at_one_address():
    """The allocator may hand a converted weight its old address: the key still changes."""
    model = tiny()
    key = weights_key(model)
    weight = model.tail.weight
    weight.data = weight.data.view(torch.complex64)  # 8 bytes too: the same shape
    retyped = weights_key(model)
    weight.data = weight.data.view(D).view(-1)
    reshaped = weights_key(model)
    assert len({key, retyped, reshaped}) == 3
    assert weight.data_ptr() == model.tail.weight.data_ptr()
