"""Answers that point at the picture, sent back drawn: when a reply names regions (seekmoe.multimodal.grounding's
`<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>`) and its request carried an image, the regions are drawn on
a copy of the request's LAST image and the copy goes back as a PNG beside the text, which stays the model's own:

    /v1/chat/completions  message.images (a streamed choice: on its finish chunk's delta.images)
                          [{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}], as OpenRouter
                          returns images
    /v2/generate          "images": ["<base64 PNG>"] (a stream: on its last chunk)

Without a region or an image the field is left out. A region the text cannot be read as (a box out of 0..999, a tag
left open) is no region: such a reply comes back as text alone.
"""

from __future__ import annotations

import asyncio
import base64

from seekmoe.multimodal.grounding import DET, annotated_png
from seekmoe.multimodal.model import Media


def last_image(media: list[Media]):
    """The decoded picture of the request's last image, None when it had none."""
    return next((m.source for m in reversed(media) if m.kind == "image" and m.source is not None), None)


async def images(text: str, media: list[Media]) -> list[str] | None:
    """/v2/generate's images: [base64 PNG] for a reply that names regions of an image it was shown, else None.
    Drawn on a thread: a large picture takes a while to draw and compress, and other streams go on meanwhile."""
    if DET not in text or not any(m.kind == "image" for m in media):
        return None  # the common case, decided without a thread
    png = await asyncio.to_thread(annotated_png, text, last_image(media))
    return [base64.b64encode(png).decode("ascii")] if png is not None else None


async def image_parts(text: str, media: list[Media]) -> list[dict] | None:
    """/v1/chat/completions' images: OpenAI image_url parts with data: URLs, else None."""
    pngs = await images(text, media)
    return None if pngs is None else [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b}"}}
                                      for b in pngs]
