"""The trainer's step (csd_fast.train.step): eagerly, the same update as the loss and
optimizer written out here; replayed from a graph (a CPU stand-in here, CUDA in the
cuda-marked tests), the same weights as eagerly through a learning rate that changes
every step (one capture), warm-up before every capture, non-finite losses skipped on
the device and reported at the next read, and no stale derived weights after replays."""
import copy

import pytest
import torch

import csd_fast
from csd_fast import EDSRCSD
from csd_fast.inference import upscale
from csd_fast.losses import CSDLoss, load_vgg19
from csd_fast.train import step as step_module
from csd_fast.train.step import TrainStep, graph_supported, set_capturable
from csd_fast.train.trainer import StageForward

CUDA_READY = torch.cuda.is_available() and csd_fast.build_info()["cuda"]


def tiny_setup(device, seed=0):
    torch.manual_seed(seed)
    model = EDSRCSD(scale=2, n_resblocks=2, n_feats=16).to(device)
    vgg = load_vgg19(random_weights=True).to(device)
    lr = torch.rand(4, 3, 12, 12, device=device) * 255
    hr = torch.rand(4, 3, 24, 24, device=device) * 255
    return model, vgg, lr, hr


def make_step(model, vgg, amp_dtype=None, use_graph=False, lr=1e-3, grad_clip=None,
              graphs=None, check_finite=lambda terms: None):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss = CSDLoss(vgg, lambda_c=200.0, neg_num=3) if vgg is not None else CSDLoss(None, 0.0, 0.0)
    net = StageForward(model, "csd" if vgg is not None else "student", 0.5)
    step = TrainStep(net, list(model.parameters()), loss, optimizer,
                     torch.amp.GradScaler(enabled=False), 2, amp_dtype, grad_clip,
                     check_finite=check_finite, use_graph=use_graph, graphs=graphs)
    return step, optimizer


class CpuStepGraphs:
    """A CPU stand-in for CudaStepGraphs. Recording runs nothing, as a capture does (what
    the recorded run changed is put back); a replay runs it again with fresh gradients,
    and, as a CUDA graph does, without bumping the weights' version counters or changing
    any Python state (the modules' attributes are put back)."""

    def __init__(self, model, optimizer, step=None):
        self.model, self.optimizer, self.step = model, optimizer, step
        self.warmups = self.captures = self.replays = 0

    def warm_up(self, run):
        self.warmups += 1
        return run()

    def _changed_by_a_step(self):
        state = [t for s in self.optimizer.state.values() for t in s.values()
                 if isinstance(t, torch.Tensor)]
        static = []  # the step's buffers (inputs too: putting them back is harmless)
        for value in self.step._static.values():
            values = value.values() if isinstance(value, dict) else \
                value if isinstance(value, list) else [value]
            static += [v for v in values if isinstance(v, torch.Tensor)]
        return list(self.model.parameters()) + state + static

    def record(self, run):
        self.captures += 1
        tensors = self._changed_by_a_step()
        saved = [t.detach().clone() for t in tensors]
        out = run()
        with torch.no_grad():
            for t, value in zip(tensors, saved):
                t.copy_(value)

        def replay():
            self.replays += 1
            params = list(self.model.parameters())
            versions = [p._version for p in params]
            for p in params:
                p.grad = None
            attributes = [(m, dict(vars(m))) for m in self.model.modules()]
            new = run()
            for module, saved in attributes:
                vars(module).clear()
                vars(module).update(saved)
            with torch.no_grad():
                for name, value in new.items():
                    out[name].copy_(value)
            torch._C._autograd._unsafe_set_version_counter(params, versions)
        return replay, out


def graph_step(model, vgg, **kwargs):
    step, optimizer = make_step(model, vgg, use_graph=True, **kwargs)
    step.graphs = CpuStepGraphs(model, optimizer, step)
    return step, optimizer


def test_eager_step_is_the_written_out_update():
    model, vgg, lr, hr = tiny_setup("cpu")
    twin = EDSRCSD(scale=2, n_resblocks=2, n_feats=16)
    twin.load_state_dict(model.state_dict())
    init = [p.detach().clone() for p in model.parameters()]
    step, _ = make_step(model, vgg)
    terms = step(lr, hr, torch.Generator().manual_seed(3))

    optimizer = torch.optim.Adam(twin.parameters(), lr=1e-3)
    loss_fn = CSDLoss(vgg, lambda_c=200.0, neg_num=3)
    want = loss_fn(twin(lr, 0.5), twin(lr, 1.0), hr, lr, 2, torch.Generator().manual_seed(3))
    want["total"].backward()
    optimizer.step()
    torch.testing.assert_close(terms["total"], want["total"])
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, msg=name)
    assert all(not torch.equal(a, b) for a, b in zip(model.parameters(), init))


def test_graph_needs_cuda_one_process_and_no_fp16_scaling():
    cuda = torch.device("cuda")
    assert "CUDA" in graph_supported(torch.device("cpu"), 1, "bf16")
    assert "DDP" in graph_supported(cuda, 2, "bf16")
    assert "fp16" in graph_supported(cuda, 1, "fp16")
    assert graph_supported(cuda, 1, "bf16") is None and graph_supported(cuda, 1, None) is None


def test_capturable_state_moves_with_the_setting():
    model, vgg, lr, hr = tiny_setup("cpu")
    step, optimizer = make_step(model, vgg)
    step(lr, hr, torch.Generator().manual_seed(0))
    group = optimizer.param_groups[0]
    assert group["capturable"] is False
    set_capturable(optimizer, True)
    assert group["capturable"] is True
    state = optimizer.state[group["params"][0]]
    assert state["step"].dtype == torch.float32 and float(state["step"]) == 1.0
    set_capturable(optimizer, False)
    assert group["capturable"] is False and state["step"].device.type == "cpu"


def test_lr_changing_every_step_captures_once_and_matches_eager():
    """A cosine schedule changes the learning rate every step: the replayed step reads
    it from a device tensor, so it is captured once, and lands where eager steps land."""
    results = []
    for use_graph in (False, True):
        model, vgg, lr, hr = tiny_setup("cpu")
        step, optimizer = graph_step(model, None) if use_graph else make_step(model, None)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 8)
        for i in range(8):
            step(lr + i, hr, torch.Generator().manual_seed(i))
            scheduler.step()
        assert isinstance(optimizer.param_groups[0]["lr"], float)  # the scheduler's own
        results.append([p.detach().clone() for p in model.parameters()])
    graphs = step.graphs
    assert (graphs.warmups, graphs.captures, graphs.replays) == (3, 1, 5)
    init = tiny_setup("cpu")[0].parameters()
    assert max(float((a - b.detach()).abs().max()) for a, b in zip(results[1], init)) > 1e-4
    for a, b in zip(*results):  # fused Adam against the for-loop one: rounding apart
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_capture_key_holds_no_learning_rate():
    model, vgg, lr, hr = tiny_setup("cpu")
    step, optimizer = graph_step(model, None, lr=0.125)
    for i in range(4):
        step(lr, hr, torch.Generator())
    assert 0.125 not in step._graph_key and step.graphs.captures == 1


def test_new_batch_shape_is_warmed_up_before_its_capture():
    model, vgg, lr, hr = tiny_setup("cpu")
    step, _ = graph_step(model, None)
    for _ in range(5):
        step(lr, hr, torch.Generator())
    assert (step.graphs.warmups, step.graphs.captures) == (3, 1)
    for _ in range(5):
        step(lr[:2], hr[:2], torch.Generator())  # a smaller last batch
    assert (step.graphs.warmups, step.graphs.captures, step.graphs.replays) == (6, 2, 4)


class NonFinite(RuntimeError):
    pass


def raising(step_of):
    """check_finite: raises NonFinite saying how many steps ago the bad one ran."""
    def check(terms):
        if not torch.isfinite(terms["total"]).all():
            raise NonFinite(f"{float(terms['total'])} {step_of().steps_since_nonfinite} steps ago")
    return check


def test_nonfinite_replay_skips_updates_until_its_flag_is_read(monkeypatch):
    monkeypatch.setattr(step_module, "NONFINITE_READ_EVERY", 5)
    model, _, lr, hr = tiny_setup("cpu")
    step, optimizer = graph_step(model, None, check_finite=raising(lambda: step))
    for _ in range(5):  # 3 warm-ups, the capture's replay and one more
        step(lr, hr, torch.Generator())
    good = [p.detach().clone() for p in model.parameters()]
    steps = float(optimizer.state[next(model.parameters())]["step"])
    bad = lr.clone()
    bad[0, 0, 0, 0] = float("nan")
    step(bad, hr, torch.Generator())  # the third replay: the flag is set, not read
    step(lr, hr, torch.Generator())  # finite again, yet skipped: the run is stopping
    with pytest.raises(NonFinite, match="nan 2 steps ago"):
        step(lr, hr, torch.Generator())  # the fifth replay reads the flag
    for a, b in zip(model.parameters(), good):
        assert torch.equal(a, b)
    assert float(optimizer.state[next(model.parameters())]["step"]) == steps


def test_nonfinite_replay_is_read_before_a_new_shape_steps_eagerly():
    model, _, lr, hr = tiny_setup("cpu")
    step, _ = graph_step(model, None, check_finite=raising(lambda: step))
    for _ in range(4):
        step(lr, hr, torch.Generator())
    bad = lr.clone()
    bad[0, 0, 0, 0] = float("inf")
    step(bad, hr, torch.Generator())
    good = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFinite, match="0 steps ago"):
        step(lr[:2], hr[:2], torch.Generator())  # would warm up eagerly
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), good))


def test_validation_after_replayed_steps_sees_the_new_weights():
    """Replays update the weights in place without new versions: inference must not
    keep the tail folded from the weights of an earlier validation."""
    torch.manual_seed(0)
    model = EDSRCSD(scale=2, n_resblocks=2, n_feats=12, backend="fused").double()
    lr = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 255
    hr = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 255
    x = torch.rand(1, 3, 10, 11, dtype=torch.float64) * 255
    step, _ = graph_step(model, None, lr=1e-2)
    outputs = []
    for steps in (4, 3):  # warm-ups and a capture, then replays only
        for _ in range(steps):
            step(lr, hr, torch.Generator())
        outputs.append(upscale(model, x, 0.5))
        fresh = EDSRCSD(scale=2, n_resblocks=2, n_feats=12, backend="fused").double()
        fresh.load_state_dict(model.state_dict())
        with torch.no_grad():
            want = fresh(x, 0.5).float()
        torch.testing.assert_close(outputs[-1], want, rtol=0, atol=0)
    assert step.graphs.replays == 4
    assert (outputs[1] - outputs[0]).abs().max() > 1e-3


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA GPU and the CUDA kernels")
@pytest.mark.parametrize("dataset_negatives", [False, True], ids=["batch_negatives", "dataset_negatives"])
@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
def test_cuda_graph_step_matches_eager(amp_dtype, dataset_negatives):
    """8 steps, a learning-rate decay after step 5: replaying the captured step (the one
    graph reads the decayed rate from its device tensor) lands where eager steps land;
    with dataset negatives (6 > the batch of 4, new ones each step) fed through the
    graph's buffer too."""
    results = []
    for use_graph in (False, True):
        model, vgg, lr, hr = tiny_setup("cuda")
        model.to(memory_format=torch.channels_last)
        step, optimizer = make_step(model, vgg, amp_dtype, use_graph, grad_clip=1.0)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 5, 0.1)
        pool = torch.rand(6, 3, 12, 12, device="cuda", generator=torch.Generator("cuda").manual_seed(1)) * 255
        losses = []
        for i in range(8):
            x = (lr + i).contiguous(memory_format=torch.channels_last)
            negatives = pool.roll(i, 0) if dataset_negatives else None
            losses.append(float(step(x, hr, torch.Generator().manual_seed(i),
                                     negatives=negatives)["total"]))
            scheduler.step()
        results.append((losses, [p.detach().clone() for p in model.parameters()]))
    (eager_losses, eager_params), (graph_losses, graph_params) = results
    rtol = 1e-4 if amp_dtype is None else 2e-2
    torch.testing.assert_close(torch.tensor(graph_losses), torch.tensor(eager_losses), rtol=rtol,
                               atol=0)
    for a, b in zip(graph_params, eager_params):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))
    init = tiny_setup("cuda")[0].parameters()
    moved = max(float((a - b).abs().max()) for a, b in zip(graph_params, init))
    assert moved > 1e-4, "training did not move the weights: the comparison would be vacuous"
