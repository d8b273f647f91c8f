"""Step grids against golden values worked out from their definitions (exact fractions for the
closed-form grids; an independent numpy nearest-lambda search for logsnr / karras, then the
documented push-apart of merged neighbours)."""

import pytest
import torch

from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.core.math_names import SPACINGS
from ddpmlab.core.step_grids import step_grid

GOLDEN = {
    ("uniform", 1000, 10): [0, 111, 222, 333, 444, 555, 666, 777, 888, 999],
    ("uniform", 100, 10): [0, 11, 22, 33, 44, 55, 66, 77, 88, 99],
    ("uniform", 100, 50): [*range(0, 50, 2), *range(51, 100, 2)],  # floor(i 99/49 + 1/2): the gap of 3 falls at 48 -> 51
    ("trailing", 1000, 10): [99, 199, 299, 399, 499, 599, 699, 799, 899, 999],
    ("trailing", 1000, 50): list(range(19, 1000, 20)),
    ("trailing", 100, 10): [9, 19, 29, 39, 49, 59, 69, 79, 89, 99],
    ("trailing", 100, 50): list(range(1, 100, 2)),
    # floor(i^2 0.8 T / (N - 1)^2): ends at 0.8 T = 800 / 80
    ("quadratic", 1000, 10): [0, 9, 39, 88, 158, 246, 355, 483, 632, 800],
    ("quadratic", 100, 10): [0, 1, 3, 8, 15, 24, 35, 48, 63, 80],  # raw 0, 0, 3: the second 0 pushed to 1
    ("quadratic", 1000, 50): [0, 1, 2, 3, 5, 8, 11, 16, 21, 26, 33, 40, 47, 56, 65, 74, 85, 96, 107, 120, 133, 146, 161, 176, 191,
                              208, 225, 242, 261, 280, 299, 320, 341, 362, 385, 408, 431, 456, 481, 506, 533, 560, 587, 616, 645,
                              674, 705, 736, 767, 800],
    ("logsnr", 1000, 10): [0, 5, 22, 73, 202, 410, 603, 757, 886, 999],
    ("logsnr", 100, 10): [0, 2, 6, 17, 34, 52, 67, 79, 90, 99],
    ("karras", 1000, 10): [0, 18, 102, 301, 511, 663, 775, 864, 937, 999],
    ("karras", 100, 10): [0, 5, 19, 41, 58, 71, 80, 87, 94, 99],
    # even in atan(sigma): most of the angle is spent below t = 0.6 T, then one jump to pure noise
    ("arctan", 100, 10): [0, 5, 11, 16, 22, 29, 36, 45, 57, 99],
    ("arctan", 1000, 10): [0, 53, 108, 166, 227, 292, 367, 456, 582, 999],
    # raw nearest timesteps 0, 1, 1, 2, 3, 4, 6, ...: the repeated 1 pushes its successors up until 6
    ("karras", 100, 50): [0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 24, 28, 32, 36, 40, 44, 47, 51, 54, 56, 59, 62, 64, 66, 68, 70, 72,
                          74, 76, 77, 79, 80, 82, 83, 85, 86, 87, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99],
}


@pytest.mark.parametrize("spacing,T,steps", sorted(GOLDEN))
def test_grids_match_their_definitions(spacing, T, steps):
    alpha_bars = DiffusionProcess.from_schedule("linear", T).alpha_bars
    assert step_grid(spacing, alpha_bars, steps) == GOLDEN[(spacing, T, steps)]


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("T,steps", [(100, 1), (100, 2), (100, 99), (100, 100), (20, 20), (1000, 7)])
def test_every_grid_has_the_asked_number_of_distinct_timesteps(spacing, schedule, T, steps):
    grid = step_grid(spacing, DiffusionProcess.from_schedule(schedule, T).alpha_bars, steps)
    assert len(grid) == steps and grid == sorted(set(grid)) and 0 <= grid[0] and grid[-1] <= T - 1
    if steps == 1 or spacing != "quadratic":
        assert grid[-1] == T - 1  # sampling starts from pure noise at t = T (quadratic: at 0.8 T, as DDIM)


def test_logsnr_grid_is_even_in_log_snr():
    alpha_bars = DiffusionProcess.from_schedule("linear", 4000).alpha_bars  # fine enough that rounding moves lambda little
    grid = step_grid("logsnr", alpha_bars, 12)
    lam = 0.5 * torch.log(alpha_bars[grid] / (1 - alpha_bars[grid]))
    gaps = lam[:-1] - lam[1:]
    assert torch.allclose(gaps, gaps.mean().expand_as(gaps), rtol=0.05)


@pytest.mark.parametrize("bad,steps,message", [("cubic", 10, "unknown spacing 'cubic'; allowed: uniform, trailing"), ("uniform", 101, "in [1, T = 100]")])
def test_bad_spacing_or_step_count_is_named(bad, steps, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        step_grid(bad, DiffusionProcess.from_schedule("linear", 100).alpha_bars, steps)
