"""WADO-RS rendered resources: one frame of an instance as JPEG or PNG (windowed, 8 bits)."""

from __future__ import annotations

import io

from aiohttp import web

from strata.common.errors import Invalid, NotFound
from strata.query.dicomweb.base import _error, _header_safe, parse_frames
from strata.query.dicomweb.wado import Wado
from strata.query.retrieve import Located


class Rendered(Wado):
    async def rendered(self, request: web.Request) -> web.Response:
        accept = request.headers.get("Accept", "image/jpeg")
        fmt = "PNG" if "image/png" in accept else "JPEG"
        try:
            (frame,) = parse_frames(request.match_info.get("frame", "1"), 1)
        except Invalid as exc:
            return _error(400, str(exc))
        try:
            [loc] = await self._run(self._locate, request)
            data = await self._run(self._render, loc, frame, fmt)
        except NotFound as exc:
            return _error(404, str(exc))
        return web.Response(
            body=data,
            content_type=f"image/{fmt.lower()}",
            headers={
                "ETag": f'"{_header_safe(loc.sha256)}-r{frame}{fmt}"',
                "Cache-Control": "private, max-age=3600",
            },
        )

    def _render(self, loc: Located, frame: int, fmt: str) -> bytes:
        import numpy as np
        import pydicom
        from PIL import Image

        ds = pydicom.dcmread(str(self.d.source.local_path(loc)))
        if "PixelData" not in ds:
            raise NotFound("the instance has no pixel data")
        arr = ds.pixel_array
        n = int(ds.get("NumberOfFrames", 1) or 1)
        if frame > n:
            raise NotFound(f"the instance has {n} frames")
        if n > 1:
            arr = arr[frame - 1]
        if ds.get("PhotometricInterpretation", "") in ("RGB", "YBR_FULL", "YBR_FULL_422"):
            from pydicom.pixels import convert_color_space

            if ds.PhotometricInterpretation != "RGB":
                arr = convert_color_space(arr, ds.PhotometricInterpretation, "RGB")
            img = Image.fromarray(arr.astype(np.uint8), "RGB")
        else:
            from pydicom.pixels import apply_modality_lut, apply_voi_lut

            a = apply_modality_lut(arr, ds).astype(np.float64)
            if "WindowCenter" in ds:
                a = apply_voi_lut(a, ds).astype(np.float64)
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
            if ds.get("PhotometricInterpretation") == "MONOCHROME1":
                a = 255.0 - a
            img = Image.fromarray(a.astype(np.uint8), "L")
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        return buf.getvalue()
