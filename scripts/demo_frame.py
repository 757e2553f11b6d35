"""Write one frame of a multi-page TIFF stack as its own TIFF (for the demo's `fcnseg infer` step).

Usage: python scripts/demo_frame.py STACK.tif INDEX OUT.tif
"""
import sys

import tifffile


def main(stack: str, index: int, out: str) -> None:
    with tifffile.TiffFile(stack) as tif:
        frame = tif.pages[index].asarray()
    tifffile.imwrite(out, frame, photometric="minisblack")
    print(f"wrote {out} (frame {index} of {stack}, {frame.shape[0]}x{frame.shape[1]} {frame.dtype})")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
