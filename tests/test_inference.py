"""Tiled inference and the x8 self-ensemble."""
import pytest
import torch

from csd_fast import EDSRCSD
from csd_fast.inference import receptive_radius, self_ensemble, tiled, upscale


def random_model(scale, blocks=2, n_feats=8):
    torch.manual_seed(1)
    model = EDSRCSD(scale, blocks, n_feats, 0.5).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_receptive_radius_is_exact(scale):
    """Changing one LR pixel changes outputs within the radius and nothing beyond."""
    model = random_model(scale)
    radius = receptive_radius(model)
    x = torch.rand(1, 3, 31, 31, dtype=torch.float64) * 255
    y = x.clone()
    y[..., 15, 15] += 50
    with torch.no_grad():
        changed = (model(x) - model(y)).abs().amax(dim=(0, 1)) > 0
    rows = changed.any(dim=1).nonzero().flatten()
    reach = max(15 * scale - rows.min().item(), rows.max().item() - (15 * scale + scale - 1))
    assert (reach + scale - 1) // scale == radius


@pytest.mark.parametrize("scale,tile,width", [(2, 7, 1.0), (3, 10, 0.5), (4, 6, 0.25)])
def test_tiled_equals_untiled_with_enough_overlap(scale, tile, width):
    model = random_model(scale)
    x = torch.rand(2, 3, 23, 17, dtype=torch.float64) * 255
    with torch.no_grad():
        want = model(x, width)
    got = upscale(model, x, width, tile=tile)
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-3)


def test_tiled_without_overlap_differs():
    """The overlap matters: without it tile seams change the result (the test can fail)."""
    model = random_model(2)
    x = torch.rand(1, 3, 20, 20, dtype=torch.float64) * 255
    with torch.no_grad():
        want = model(x)
        got = tiled(model, x, 2, tile=8, overlap=0)
    assert (got - want).abs().max() > 1e-3


def test_self_ensemble_matches_explicit_average():
    model = random_model(2)
    x = torch.rand(1, 3, 9, 11, dtype=torch.float64) * 255
    with torch.no_grad():
        outs = []
        for hflip in (False, True):
            for vflip in (False, True):
                for transpose in (False, True):
                    t = x
                    t = t.flip(-1) if hflip else t
                    t = t.flip(-2) if vflip else t
                    t = t.transpose(-1, -2) if transpose else t
                    y = model(t.contiguous())
                    y = y.transpose(-1, -2) if transpose else y
                    y = y.flip(-2) if vflip else y
                    y = y.flip(-1) if hflip else y
                    outs.append(y)
        want = torch.stack(outs).mean(0)
    torch.testing.assert_close(upscale(model, x, ensemble=True), want.float(), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(upscale(model, x, ensemble=True, tile=5), want.float(), rtol=1e-5, atol=1e-3)


def test_self_ensemble_of_an_equivariant_map_is_the_map():
    x = torch.rand(2, 3, 5, 7)
    torch.testing.assert_close(self_ensemble(lambda t: t * 2, x), x * 2)


def test_tile_errors():
    with pytest.raises(ValueError, match="tile >= 1"):
        tiled(lambda t: t, torch.rand(1, 3, 4, 4), 1, tile=0, overlap=0)


def test_each_ensemble_transform_is_undone_and_all_eight_differ():
    from csd_fast.inference import _transform, _untransform

    x = torch.rand(1, 3, 4, 4)
    seen = []
    for t in range(8):
        y = _transform(x, t)
        torch.testing.assert_close(_untransform(y, t), x, rtol=0, atol=0)
        assert not any(torch.equal(y, z) for z in seen), f"transform {t} repeats another"
        seen.append(y)
