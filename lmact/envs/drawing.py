"""Drawing helpers shared by the environments' image renderings (Pillow)."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def draw_centered(
    draw: ImageDraw.ImageDraw,
    text: str,
    center: tuple[float, float],
    font: Font,
    fill: str | tuple[int, int, int] = "black",
) -> None:
    """Draw `text` centred on `center`."""
    # Centred from the text's bounding box, since anchors need a FreeType font and the default
    # font falls back to a bitmap one when Pillow is built without FreeType.
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    position = (center[0] - (left + right) / 2, center[1] - (top + bottom) / 2)
    draw.text(position, text, fill=fill, font=font)


def png_bytes(image: Image.Image) -> bytes:
    """`image` encoded as PNG, byte-stable for the same pixels (no optimisation pass)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
