"""Pointing games on hand-made maps and boxes."""

from __future__ import annotations

import math

import pytest
import torch

from camkit.metrics import box_masks, centre_map, energy_pointing_game, peak, pointing_game


def _map_with_peak(row: int, col: int, size: int = 10) -> torch.Tensor:
    m = torch.zeros(size, size)
    m[row, col] = 1.0
    return m


def test_peak_takes_the_first_maximum_in_row_major_order():
    m = torch.zeros(1, 4, 4)
    m[0, 2, 1] = m[0, 1, 3] = 5.0
    assert peak(m).tolist() == [[1, 3]]


def test_pointing_game_hits_inside_and_misses_outside_the_box():
    # box covers columns 2..4 and rows 3..5
    box = torch.tensor([2, 3, 5, 6])
    maps = torch.stack([_map_with_peak(3, 2), _map_with_peak(5, 4), _map_with_peak(6, 4)])
    assert pointing_game(maps, box.expand(3, 4), tolerance=0).tolist() == [1.0, 1.0, 0.0]


def test_pointing_game_tolerance_is_euclidean_distance_to_the_box():
    box = torch.tensor([[2, 3, 5, 6]] * 3)
    # (row 8, col 4): 3 below the box; (row 7, col 6): dx 2, dy 2 -> sqrt(8) ~ 2.83;
    # (row 1, col 0): dx 2, dy 2 as well
    maps = torch.stack([_map_with_peak(8, 4), _map_with_peak(7, 6), _map_with_peak(1, 0)])
    assert pointing_game(maps, box, tolerance=2.9).tolist() == [0.0, 1.0, 1.0]
    assert pointing_game(maps, box, tolerance=math.sqrt(8) - 0.01).tolist() == [0.0, 0.0, 0.0]
    assert pointing_game(maps, box, tolerance=3).tolist() == [1.0, 1.0, 1.0]


def test_energy_pointing_game_is_the_share_of_mass_in_the_box():
    m = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 0.5], [0.0, 0.0, 1.5]])
    box = torch.tensor([[0, 0, 2, 2]])  # the top-left 2 x 2 block: 1 + 2 + 3 + 4 = 10 of 12
    assert energy_pointing_game(m[None], box).item() == pytest.approx(10 / 12)
    box = torch.tensor([[2, 1, 3, 3]])  # column 2, rows 1..2: 0.5 + 1.5
    assert energy_pointing_game(m[None], box).item() == pytest.approx(2 / 12)


def test_energy_pointing_game_of_an_empty_map_is_nan():
    assert math.isnan(energy_pointing_game(torch.zeros(1, 3, 3), torch.tensor([[0, 0, 1, 1]])))


def test_box_masks_are_half_open():
    mask = box_masks(torch.tensor([[1, 0, 3, 2]]), 3, 4)[0]
    expected = torch.tensor(
        [[False, True, True, False], [False, True, True, False], [False, False, False, False]]
    )
    assert torch.equal(mask, expected)


def test_centre_map_peaks_at_the_centre_pixel_with_gaussian_falloff():
    m = centre_map(6, 8, sigma=2.0)
    assert peak(m[None]).tolist() == [[3, 4]]
    assert m[3, 4].item() == 1.0
    assert m[1, 5].item() == pytest.approx(math.exp(-(4 + 1) / 8))
