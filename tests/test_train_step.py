"""The trainer's step (csd_fast.train.step): eagerly, the same update as the loss and
optimizer written out here; replayed from a CUDA graph, the same weights as eagerly,
through a learning-rate change (recapture) and with the contrastive term."""
import pytest
import torch

import csd_fast
from csd_fast import EDSRCSD
from csd_fast.losses import CSDLoss, load_vgg19
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


def make_step(model, vgg, amp_dtype=None, use_graph=False, lr=1e-3, grad_clip=None):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    step = TrainStep(StageForward(model, "csd", 0.5), list(model.parameters()),
                     CSDLoss(vgg, lambda_c=200.0, neg_num=3), optimizer,
                     torch.amp.GradScaler(enabled=False), 2, amp_dtype, grad_clip,
                     check_finite=lambda terms: None, use_graph=use_graph)
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


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA GPU and the CUDA kernels")
@pytest.mark.parametrize("dataset_negatives", [False, True], ids=["batch_negatives", "dataset_negatives"])
@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
def test_cuda_graph_step_matches_eager(amp_dtype, dataset_negatives):
    """8 steps, a learning-rate decay after step 5: replaying the captured step (and
    recapturing it at the decay) lands where eager steps land; with dataset negatives
    (6 > the batch of 4, new ones each step) fed through the graph's buffer too."""
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
