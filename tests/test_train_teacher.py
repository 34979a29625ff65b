"""A csd/student run starts from a teacher checkpoint of any layout with the hyper-parameters
that checkpoint carries (value range, mean, res_scale), and feeds the network its own range."""
import pytest
import torch

from csd_fast import EDSRCSD, load_checkpoint, save_checkpoint
from csd_fast.checkpoint.layouts import LAYOUTS
from csd_fast.train import load_config, train

from _data import random_images

TINY = dict(scale=2, n_feats=8, n_resblocks=1, lr_patch=8, batch=2, neg_num=2, random_vgg=True,
            width=0.5, progress=False, log_every=1, tensorboard=False, val_data=None)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return random_images(tmp_path_factory.mktemp("hr"), 3, 24, seed=1)


def teacher_model():
    torch.manual_seed(3)
    return EDSRCSD(scale=2, n_resblocks=1, n_feats=8, res_scale=0.5, rgb_range=1.0, img_range=255.0,
                   rgb_mean=(0.5, 0.4, 0.3))


def basicsr_teacher(path):
    """A teacher saved as BasicSR saves EDSR: a bare state dict (pixels in [0, 1] and the mean
    are BasicSR's settings, not the file's)."""
    model = teacher_model()
    names = {k: LAYOUTS["basicsr"].module(k.rpartition(".")[0], 1) + "." + k.rpartition(".")[2]
             for k in model.state_dict()}
    torch.save({"params": {names[k]: v for k, v in model.state_dict().items()}}, path)
    return model


def run(images, out, **kw):
    return train(load_config(**{**TINY, "train_data": images, "out_dir": str(out), **kw}))


@pytest.mark.parametrize("stage", ["csd", "student"])
def test_a_csd_fast_teachers_hyper_parameters_all_survive(images, tmp_path, stage):
    teacher = teacher_model()
    save_checkpoint(teacher, tmp_path / "teacher.safetensors")
    result = run(images, tmp_path / "run", stage=stage, iterations=1, lr=1e-12,
                 teacher_checkpoint=str(tmp_path / "teacher.safetensors"))
    trained = load_checkpoint(result["last"])
    assert trained.config() == teacher.config()  # rgb_range 1, img_range 255, mean, res_scale 0.5
    assert trained.default_width == 0.5
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[key], value, rtol=0, atol=1e-6)
    # pixels went in as [0, 1] values: an L1 in 0-255 units would be far above 1
    assert 0 < result["terms"]["l1_student"] < 1


def test_a_basicsr_teacher_keeps_its_range_and_takes_res_scale_from_the_config(images, tmp_path):
    basicsr_teacher(tmp_path / "teacher.pth")
    result = run(images, tmp_path / "run", stage="student", iterations=1, res_scale=0.5,
                 teacher_checkpoint=str(tmp_path / "teacher.pth"))
    config = load_checkpoint(result["last"]).config()
    assert (config["rgb_range"], config["img_range"], config["res_scale"]) == (1.0, 255.0, 0.5)
    assert 0 < result["terms"]["l1_student"] < 1


def test_the_config_range_reaches_the_network(images, tmp_path):
    unit = run(images, tmp_path / "unit", stage="teacher", iterations=1, rgb_range=1)
    assert load_checkpoint(unit["last"]).rgb_range == 1.0
    assert unit["terms"]["l1_student"] < 1
    full = run(images, tmp_path / "full", stage="teacher", iterations=1)
    assert load_checkpoint(full["last"]).rgb_range == 255.0
    assert full["terms"]["l1_student"] > 1


@pytest.mark.parametrize("overrides, says", [
    (dict(n_feats=16), "n_feats=16 was requested but the basicsr weights have n_feats=8"),
    (dict(n_feats=None, n_resblocks=None), "n_resblocks=16 was requested .* preset edsr-baseline"),
    (dict(scale=4), "scale=4 was requested but the basicsr weights have scale=2"),
])
def test_a_config_that_contradicts_the_teacher_is_refused(images, tmp_path, overrides, says):
    basicsr_teacher(tmp_path / "teacher.pth")
    with pytest.raises(ValueError, match=says):
        run(images, tmp_path / "run", stage="student", iterations=1,
            teacher_checkpoint=str(tmp_path / "teacher.pth"), **overrides)
    assert not (tmp_path / "run").exists()
