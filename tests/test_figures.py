"""The course's diagrams: drawn deterministically, committed as drawn, shown offline, never hot-linked."""

from __future__ import annotations

import functools
import io
import re
from pathlib import Path

import matplotlib.image
import nbformat
import numpy as np
import pytest

from course_utils import figures

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("conv_stride_padding", "receptive_field", "unet", "upsampling", "attention", "vit_patching", "simclr",
         "byol", "mae", "fusion_early_late", "ltae")
SHOW_FIGURE = re.compile(r"""show_figure\(\s*["']([^"']+)["']""")
MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)")
HTML_IMAGE = re.compile(r"""<img[^>]*\ssrc\s*=\s*["']([^"']+)""", re.IGNORECASE)


@functools.cache
def drawn(name: str) -> bytes:
    """The figure drawn once per test session (drawing all eleven costs a few seconds)."""
    return figures.render_figure(name)


def pixels(png: bytes) -> np.ndarray:
    return matplotlib.image.imread(io.BytesIO(png), format="png")


def notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").rglob("*.ipynb"))


def test_every_lesson_diagram_is_registered_under_its_agreed_name():
    assert tuple(figures.FIGURES) == NAMES


def test_drawing_is_deterministic_and_draws_something():
    first, second = drawn("unet"), figures.render_figure("unet")
    assert first == second, "the same figure must give the same PNG bytes"
    image = pixels(first)
    assert image.shape[1] == 12 * figures.DPI  # 12 inches wide at DPI
    colours = np.unique(image[..., :3].reshape(-1, 3).round(2), axis=0)
    assert len(colours) > 20, "a diagram is more than a blank canvas"
    sky_blue = np.array([0x56, 0xB4, 0xE9]) / 255  # the encoder boxes, Okabe-Ito sky blue (90 % opaque on white)
    assert np.any(np.abs(image[..., :3] - (0.9 * sky_blue + 0.1)).max(axis=-1) < 0.02)


def test_committed_pngs_are_what_the_code_draws():
    for name in NAMES:
        committed = ROOT / "figures" / f"{name}.png"
        assert committed.is_file(), f"figures/{name}.png is missing: run `make figures`"
        fresh, stored = pixels(drawn(name)), pixels(committed.read_bytes())
        assert fresh.shape == stored.shape, f"figures/{name}.png is stale: run `make figures`"
        assert np.abs(fresh - stored).max() < 1e-6, f"figures/{name}.png is stale: run `make figures`"


def test_draw_figure_writes_the_file_and_rejects_unknown_names(tmp_path):
    path = figures.draw_figure("attention", tmp_path / "out" / "attention.png")
    assert path.read_bytes() == drawn("attention")
    assert [p.name for p in path.parent.iterdir()] == ["attention.png"], "no temporary file left behind"
    with pytest.raises(ValueError, match="no figure named 'atention'.*attention"):
        figures.draw_figure("atention", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_show_figure_uses_the_file_or_draws_when_it_is_missing(tmp_path, monkeypatch):
    shown = figures.show_figure("ltae")
    assert shown.filename == str(ROOT / "figures" / "ltae.png")
    monkeypatch.setattr(figures, "figures_dir", lambda: tmp_path)  # a notebook opened alone: no figures/
    image = figures.show_figure("ltae")
    assert image.filename is None and image.data == drawn("ltae")
    monkeypatch.setattr(figures, "figures_dir", lambda: None)  # installed outside a checkout
    assert figures.show_figure("mae").data[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_line_writes_the_named_figures(tmp_path, capsys):
    assert figures.main(["--out", str(tmp_path), "mae", "byol"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["byol.png", "mae.png"]
    with pytest.raises(SystemExit):
        figures.main(["--out", str(tmp_path), "no_such_figure"])
    assert "unknown figure(s) no_such_figure" in capsys.readouterr().err


def test_every_image_a_notebook_references_exists_and_none_is_hot_linked():
    checked = 0
    for path in notebooks():
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            for name in SHOW_FIGURE.findall(cell.source):
                assert name in figures.FIGURES, f"{path.name}: show_figure({name!r}) is not a course figure"
                assert (ROOT / "figures" / f"{name}.png").is_file(), f"figures/{name}.png is missing"
                checked += 1
            if cell.cell_type != "markdown":
                continue
            for source in MARKDOWN_IMAGE.findall(cell.source) + HTML_IMAGE.findall(cell.source):
                assert not re.match(r"(https?:)?//", source), f"{path.name} hot-links an image: {source}"
                if not source.startswith("attachment:"):
                    assert (path.parent / source).resolve().is_file(), f"{path.name}: image {source} is missing"
                checked += 1
    assert checked >= 7, "notebooks 02, 03 and 06 show at least seven course figures"
