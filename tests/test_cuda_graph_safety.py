"""CUDA graphs on a GPU, where the CPU tests use stand-ins: tiled inference replays
its graphs (counted) instead of re-capturing them, graphs replay in another grad mode,
and captured training steps keep one graph through a learning rate that changes every
step, skip the updates of a non-finite step on the device, and leave no stale derived
weights for the next validation. Skipped without a GPU and the CUDA kernels."""
import pytest
import torch

import csd_fast
from csd_fast import EDSRCSD
from csd_fast.cuda_graphs import GraphCache
from csd_fast.inference import graph_cache, upscale
from csd_fast.losses import CSDLoss
from csd_fast.train import step as step_module
from csd_fast.train.step import CudaStepGraphs, TrainStep
from csd_fast.train.trainer import StageForward

CUDA_READY = torch.cuda.is_available() and csd_fast.build_info()["cuda"]
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA GPU and CUDA kernels")]


def model(seed=0):
    torch.manual_seed(seed)
    return EDSRCSD(scale=2, n_resblocks=2, n_feats=16).cuda()


def test_tiled_upscale_replays_from_its_third_call():
    net = model().eval()
    x = torch.rand(1, 3, 40, 36, device="cuda") * 255  # nine tile shapes at tile 16
    options = dict(tile=16, autocast_dtype=torch.bfloat16)
    eager = upscale(net, x, 0.5, cuda_graphs=False, **options)
    outs = [upscale(net, x, 0.5, **options) for _ in range(3)]
    cache = graph_cache(net)
    assert (cache.captures, cache.replays) == (9, 18)
    assert all(torch.equal(out, eager) for out in outs)


def test_graph_replays_in_the_other_grad_mode():
    net = model().eval()
    forward = lambda t: net(t, 0.5)  # noqa: E731
    x = torch.rand(1, 3, 12, 12, device="cuda") * 255
    for capture_mode, replay_mode in [(torch.inference_mode, torch.no_grad),
                                      (torch.no_grad, torch.inference_mode)]:
        cache = GraphCache()
        with capture_mode():
            cache(forward, x)
            cache(forward, x)
        with replay_mode():
            out = cache(forward, x + 1)
            want = forward(x + 1)
        assert cache.captures == 1 and cache.replays == 2 and torch.equal(out, want)


class CountingGraphs(CudaStepGraphs):
    warmups = captures = 0

    def warm_up(self, run):
        self.warmups += 1
        return super().warm_up(run)

    def record(self, run):
        self.captures += 1
        return super().record(run)


def l1_step(net, use_graph, lr=1e-3, check_finite=lambda terms: None):
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    step = TrainStep(StageForward(net, "student", 0.5), list(net.parameters()),
                     CSDLoss(None, 0.0, 0.0), optimizer, torch.amp.GradScaler(enabled=False), 2,
                     None, None, check_finite=check_finite, use_graph=use_graph,
                     graphs=CountingGraphs())
    return step, optimizer


def batch():
    g = torch.Generator("cuda").manual_seed(0)
    return (torch.rand(4, 3, 12, 12, device="cuda", generator=g) * 255,
            torch.rand(4, 3, 24, 24, device="cuda", generator=g) * 255)


def test_lr_changing_every_step_is_captured_once():
    lr, hr = batch()
    results = []
    for use_graph in (False, True):
        net = model()
        step, optimizer = l1_step(net, use_graph)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 10)
        for i in range(10):
            step(lr + i, hr, torch.Generator())
            scheduler.step()
        results.append([p.detach().clone() for p in net.parameters()])
    assert (step.graphs.warmups, step.graphs.captures) == (3, 1)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


class NonFinite(RuntimeError):
    pass


def raise_if_nonfinite(terms):
    if not torch.isfinite(terms["total"]).all():
        raise NonFinite


def test_nonfinite_batch_leaves_the_weights_and_raises_at_the_next_read(monkeypatch):
    monkeypatch.setattr(step_module, "NONFINITE_READ_EVERY", 5)
    lr, hr = batch()
    net = model()
    step, _ = l1_step(net, True, check_finite=raise_if_nonfinite)
    for _ in range(5):  # warm-ups, the capture, one more replay; the fifth replay reads
        step(lr, hr, torch.Generator())
    good = [p.detach().clone() for p in net.parameters()]
    bad = lr.clone()
    bad[0, 0, 0, 0] = float("nan")
    step(bad, hr, torch.Generator())
    step(lr, hr, torch.Generator())
    with pytest.raises(NonFinite):
        step(lr, hr, torch.Generator())
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), good))


def test_validation_after_replayed_steps_sees_the_new_weights():
    lr, hr = batch()
    net = model()
    x = torch.rand(1, 3, 20, 18, device="cuda") * 255
    step, _ = l1_step(net, True, lr=1e-2)
    for steps in (4, 3):  # warm-ups and a capture, then replays only
        for _ in range(steps):
            step(lr, hr, torch.Generator())
        torch.cuda.synchronize()
        got = upscale(net, x, 0.5)
        fresh = model(seed=1)
        fresh.load_state_dict(net.state_dict())
        want = upscale(fresh, x, 0.5, cuda_graphs=False)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-3)  # a stale fold is off by 1e-2
