"""The training-curves PNG (csd_fast.train.curves): odd logs draw without crashing."""
import pytest
from PIL import Image

from csd_fast.train.curves import (ALONE_COLOUR, STUDENT_COLOUR, TEACHER_COLOUR, nice_ticks, read_log,
                                  training_curves)
from csd_fast.train.runlog import LOG_FIELDS


def row(iteration, **values):
    return {k: "" for k in LOG_FIELDS} | {"iteration": str(iteration)} | {k: str(v) for k, v in values.items()}


def colours(path) -> set:
    with Image.open(path) as im:
        assert im.size[0] == 720 and 500 <= im.size[1] <= 900
        return {c for _, c in im.convert("RGB").getcolors(1 << 20)}


@pytest.mark.parametrize("rows", [
    [],                                                           # nothing logged yet
    [row(1, l1_student=5.0, l1_teacher=4.0, contrastive=0.1)],    # a single row
    [row(i, l1_student=10 - i, l1_teacher=9 - i) for i in range(1, 6)],   # no validation rows
    [row(1, l1_student=3.0, val_psnr_student="inf", val_psnr_teacher="nan")],  # unplaceable PSNR
    [row(i, l1_student=2.0, val_psnr_student=30.0) for i in range(1, 4)],  # flat: zero y range
])
def test_odd_logs_draw(tmp_path, rows):
    path = training_curves([("csd", rows)], tmp_path / "c.png", width=0.25)
    assert path == tmp_path / "c.png"
    if rows and rows[0]["l1_student"]:
        assert STUDENT_COLOUR in colours(path)
    else:
        colours(path)


def test_stages_in_one_figure_and_read_log(tmp_path):
    """The demo's figure: the teacher run, then the csd run continuing the width-1 curve."""
    log = tmp_path / "log.csv"
    log.write_text(",".join(LOG_FIELDS) + "\n" + "1,4,4,,,0.1,3,,\n2,3,3,,,0.1,3,20,20\n")
    teacher = read_log(tmp_path)  # a run folder or the file itself
    assert teacher == read_log(log) and teacher[1]["val_psnr_teacher"] == "20"
    csd = [row(i, l1_student=5 - i, l1_teacher=3 - i / 2, val_psnr_student=19 + i,
               val_psnr_teacher=21) for i in (1, 2, 3)]
    path = training_curves([("teacher", teacher), ("csd", csd)], tmp_path / "c.png", 0.5)
    assert {TEACHER_COLOUR, STUDENT_COLOUR} <= colours(path)
    # the grey stage boundary at iteration 2 of 5: a vertical line through the first panel
    # (panel x from 50 to 660, y from 40 to 250)
    with Image.open(path) as im:
        column = [im.convert("RGB").getpixel((50 + 610 * 2 // 5, y)) for y in range(41, 250)]
    assert column.count((180, 180, 180)) > 150


@pytest.mark.parametrize("lo, hi, count, ticks, decimals", [
    (32.1, 33.7, 5, [32.0, 32.5, 33.0, 33.5, 34.0], 1),      # PSNR: both ends on a tick
    (0, 1400, 7, [0, 200, 400, 600, 800, 1000, 1200, 1400], 0),
    (0.012, 0.097, 5, [0.0, 0.02, 0.04, 0.06, 0.08, 0.1], 2),
    (3.2, 61.5, 5, [0, 20, 40, 60, 80], 0),
    (0, 10, 4, [0, 2.5, 5, 7.5, 10], 1),                     # a 2.5 step needs one decimal more
])
def test_axis_ticks_are_round_values_covering_the_data(lo, hi, count, ticks, decimals):
    got, got_decimals = nice_ticks(lo, hi, count)
    assert got == pytest.approx(ticks) and got_decimals == decimals


def test_student_alone_is_drawn_beside_the_stages(tmp_path):
    teacher = [row(i, l1_student=9 - i, val_psnr_student=20 + i, val_psnr_teacher=20 + i) for i in (1, 2)]
    csd = [row(i, l1_student=5 - i, l1_teacher=3, val_psnr_student=19 + i, val_psnr_teacher=21) for i in (1, 2)]
    alone = [row(i, l1_student=6 - i, val_psnr_student=18 + i) for i in (1, 2, 3, 4)]
    path = training_curves([("teacher", teacher), ("csd", csd)], tmp_path / "c.png", 0.5, student_alone=alone)
    assert {TEACHER_COLOUR, STUDENT_COLOUR, ALONE_COLOUR} <= colours(path)
    assert ALONE_COLOUR not in colours(training_curves([("teacher", teacher), ("csd", csd)],
                                                       tmp_path / "d.png", 0.5))
