"""Synthetic road scenes with signs and plates: deterministic frames the text detector can read."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

__all__ = ["render_scene"]

_SIGNS = ("STOP", "EXIT 42", "SPEED 50", "NO ENTRY", "CITY CENTRE", "ONE WAY", "BUS ONLY", "SLOW")
_PLATES = ("AB 123 CD", "KX 88 PLT", "EV 2026 V", "M 4711 Q", "RS 900 TT", "LN 55 ABC")


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def render_scene(index: int, height: int = 384, width: int = 640) -> npt.NDArray[np.uint8]:
    """Frame `index` of an endless deterministic sequence: sky, road, a sign and a car plate."""
    rng = np.random.default_rng(index)
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    horizon = int(height * rng.uniform(0.35, 0.5))
    draw.rectangle((0, 0, width, horizon), fill=(120, 160, 210))
    draw.rectangle((0, horizon, width, height), fill=(70, 72, 75))
    for lane in range(0, width, 80):
        draw.rectangle((lane + 20, height - 30, lane + 60, height - 24), fill=(230, 230, 230))
    # A sign on a pole, left side.
    sx = int(rng.uniform(0.05, 0.35) * width)
    sy = int(rng.uniform(0.08, 0.25) * height)
    sign = _SIGNS[index % len(_SIGNS)]
    font = _font(int(height * 0.07))
    left, top, right, bottom = draw.textbbox((0, 0), sign, font=font)
    pad = 10
    box = (sx, sy, sx + right - left + 2 * pad, sy + bottom - top + 2 * pad)
    draw.rectangle(
        (
            box[0] + (box[2] - box[0]) // 2 - 3,
            box[3],
            box[0] + 3 + (box[2] - box[0]) // 2,
            horizon + 20,
        ),
        fill=(90, 90, 90),
    )
    draw.rectangle(box, fill=(240, 240, 240), outline=(200, 20, 20), width=4)
    draw.text((sx + pad - left, sy + pad - top), sign, font=font, fill=(20, 20, 20))
    # A car with a plate, right side.
    cx = int(rng.uniform(0.45, 0.65) * width)
    cy = int(rng.uniform(0.55, 0.65) * height)
    cw, ch = int(width * 0.3), int(height * 0.25)
    draw.rectangle((cx, cy, cx + cw, cy + ch), fill=tuple(int(c) for c in rng.integers(30, 200, 3)))
    plate = _PLATES[index % len(_PLATES)]
    pfont = _font(int(height * 0.05))
    left, top, right, bottom = draw.textbbox((0, 0), plate, font=pfont)
    px = cx + (cw - (right - left)) // 2
    py = cy + ch - (bottom - top) - 18
    draw.rectangle(
        (px - 6, py - 5, px + right - left + 6, py + bottom - top + 6), fill=(250, 250, 240)
    )
    draw.text((px - left, py - top), plate, font=pfont, fill=(10, 10, 10))
    return np.asarray(image, dtype=np.uint8)
