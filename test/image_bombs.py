"""Decompression bombs for tests: small, valid-looking JPEG / PNG files whose headers claim a huge
image. A decoder that trusts the header allocates (and fills) height x width x 3 bytes."""

from __future__ import annotations

import zlib

import cv2
import numpy as np


def header_bomb_jpeg(height: int, width: int) -> bytes:
    """A 16x16 baseline JPEG (a few hundred bytes) whose SOF0 header says ``width`` x ``height``:
    libjpeg decodes the missing rows as grey, after allocating the full image."""
    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    sof = data.find(b"\xff\xc0")
    assert sof > 0, "no SOF0 marker in OpenCV's JPEG"
    data[sof + 5 : sof + 7] = int(height).to_bytes(2, "big")
    data[sof + 7 : sof + 9] = int(width).to_bytes(2, "big")
    return bytes(data)


def header_bomb_png(height: int, width: int) -> bytes:
    """A PNG whose IHDR (with a valid CRC) says ``width`` x ``height`` (8-bit RGB), followed by
    one tiny compressed scanline: the decoder allocates the whole image before it finds the data
    missing."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    ihdr = int(width).to_bytes(4, "big") + int(height).to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    idat = zlib.compress(b"\x00" * (1 + 3 * min(int(width), 64)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
