"""Check that an exported ONNX model labels an image of any size as `fcnseg infer` does, fed as it is.

The model runs in a bare onnxruntime session (no fcnseg code around it: no padding, no cropping on the
client side), on the frame as it is and on any --crop sizes cut from its top left corner; the reference is
`fcnseg infer --run RUN` on the same pixels (predict.label_image on the run's Caffe net). Prints one JSON line
per size: the output shape and the share of pixels whose labels agree.

    .venv/bin/python scripts/onnx_parity.py --run runs/demo --onnx runs/demo/demo.onnx \
        data/hela_raw/hela_images.tif --frame 17 --crop 257x301
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fcnseg.images import read_stack
from fcnseg.onnxmodel import read_metadata
from fcnseg.predict import label_image, load_predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="Image or stack")
    parser.add_argument("--run", required=True, help="The run the model was exported from")
    parser.add_argument("--onnx", required=True, help="The exported model")
    parser.add_argument("--frame", type=int, default=0, help="Frame of a stack (default 0)")
    parser.add_argument("--crop", action="append", default=[], metavar="HxW", help="Also a crop of HxW (repeatable)")
    args = parser.parse_args()

    session = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    _, raw_input = read_metadata(session.get_modelmeta().custom_metadata_map, args.onnx)
    caffe = load_predictor(args.run)
    frame = read_stack(args.image)[args.frame]
    images = [frame] + [frame[:int(h), :int(w)] for h, w in (c.lower().split("x") for c in args.crop)]
    for image in images:
        _, reference, _ = label_image(caffe, image, tile=0)  # `fcnseg infer` on the whole image
        _, x = caffe.network_input(image)
        feed = image.astype(np.float32) if raw_input else x
        scores = session.run(["scores"], {"image": feed[None, None]})[0][0]
        agree = float((scores.argmax(0) == reference.argmax(0)).mean()) if scores.shape[1:] == image.shape else 0.0
        print(json.dumps({"input": list(image.shape), "output": list(scores.shape[1:]),
                          "input_multiple": caffe.multiple, "label_agreement": agree}), flush=True)


if __name__ == "__main__":
    main()
