"""The image and metadata text the planner sees."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from agent.render import (
    CT_WINDOWS,
    choose_window,
    key_slice_index,
    metadata_text,
    render_key_image,
)
from image_model.volume import Volume
from tests.agent_helpers import phantom_volume


def _volume(pixels: np.ndarray, modality: str, **meta: object) -> Volume:
    ds = Dataset()
    ds.Modality = modality
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "ID-12345"
    ds.PatientBirthDate = "19700101"
    ds.BodyPartExamined = "CHEST"
    ds.SeriesDescription = "PA view"
    n = pixels.shape[0]
    return Volume(
        pixels.astype(np.float32), (1.0, 0.5, 0.5), np.zeros((n, 3)), (1, 0, 0, 0, 1, 0), [ds] * n, modality,
        meta=dict(meta),
    )


def test_ct_window_follows_the_instruction(tmp_path: Path) -> None:
    volume, _ = phantom_volume(tmp_path)
    assert choose_window(volume, "Segment the lungs") == CT_WINDOWS["lung"]
    assert choose_window(volume, "Outline the liver") == CT_WINDOWS["soft_tissue"]
    lung = render_key_image(volume, hint="lungs")
    soft = render_key_image(volume, hint="liver")
    assert lung.shape == (64, 64, 3) and lung.dtype == np.uint8
    # Lung window: lung parenchyma (-850 HU) is grey, not black as in the soft-tissue window.
    k = key_slice_index(volume)
    lung_pixels = volume.pixels[k] < -700
    inside = lung_pixels & (np.abs(volume.pixels[k] + 850) < 60)
    assert lung[..., 0][inside].mean() > 20 and soft[..., 0][inside].mean() < 5


def test_series_window_is_the_default_and_monochrome1_is_inverted() -> None:
    ramp = np.tile(np.linspace(0, 1000, 32), (1, 32, 1))
    normal = render_key_image(_volume(ramp, "CR", window_center=500.0, window_width=1000.0))
    inverted = render_key_image(_volume(ramp, "CR", window_center=500.0, window_width=1000.0,
                                        photometric_interpretation="MONOCHROME1"))
    assert normal[0, 0, 0] < 5 and normal[0, -1, 0] > 250
    assert np.array_equal(inverted, 255 - normal)


def test_key_slice_has_most_signal_and_montage_shows_three() -> None:
    pixels = np.zeros((9, 16, 16))
    pixels[6, 2:14, 2:14] = 100.0
    volume = _volume(pixels, "MR")
    assert key_slice_index(volume) == 6
    assert render_key_image(volume, montage=True).shape == (16, 48, 3)


def test_metadata_text_has_no_patient_identifiers() -> None:
    text = metadata_text(_volume(np.zeros((1, 8, 8)), "CR"))
    assert "Modality: CR" in text and "Body part: CHEST" in text and "Series description: PA view" in text
    assert "2D image" in text
    for phi in ("DOE", "JANE", "ID-12345", "19700101"):
        assert phi not in text
