"""Runs inside the bullseye chroot (Python 3.9, pycaffe 1.0.0); called by caffe_oracle.py.

Usage: python3 pycaffe_runner.py CASE_DIR. CASE_DIR holds request.json, net.prototxt,
weights.caffemodel and inputs.npz; this writes outputs.npz (blob i -> "b<i>") and result.json
(blob names, shapes, parameter layers, and those whose blobs were all zero after loading).
"""

import json
import os
import sys

import caffe
import numpy as np


def main(folder):
    with open(os.path.join(folder, "request.json")) as handle:
        request = json.load(handle)
    caffe.set_mode_cpu()
    kwargs = {"weights": os.path.join(folder, "weights.caffemodel")}
    if request.get("stages"):
        kwargs["stages"] = [str(s) for s in request["stages"]]
    if request.get("level"):
        kwargs["level"] = int(request["level"])
    net = caffe.Net(os.path.join(folder, "net.prototxt"), caffe.TEST, **kwargs)
    inputs = np.load(os.path.join(folder, "inputs.npz"))
    names = json.loads(str(inputs["names"]))
    for index, name in enumerate(names):
        array = inputs[f"i{index}"]
        if tuple(net.blobs[name].data.shape) != array.shape:
            net.blobs[name].reshape(*array.shape)
    net.reshape()
    for index, name in enumerate(names):
        net.blobs[name].data[...] = inputs[f"i{index}"]
    net.forward()
    # Blobs of the Split layers Caffe inserts for fan-out are copies; they are not compared.
    inserted = set()
    for index, layer in enumerate(net.layers):
        if layer.type == "Split":
            inserted.update(net.top_names[net._layer_names[index]])
    blobs = [b for b in net.blobs if b not in inserted]
    wanted = request.get("blobs")
    if wanted:
        blobs = [b for b in blobs if b in wanted]
    arrays = {f"b{i}": np.array(net.blobs[b].data, dtype=np.float32)
              for i, b in enumerate(blobs)}
    np.savez(os.path.join(folder, "outputs.npz"), **arrays)
    zero = [name for name, params in net.params.items()
            if all(not np.any(p.data) for p in params)]
    result = {
        "caffe_version": caffe.__version__,
        "blobs": blobs,
        "shapes": {b: list(net.blobs[b].data.shape) for b in net.blobs if b not in inserted},
        "param_layers": list(net.params),
        "zero_param_layers": zero,
        "layers": [str(n) for n, layer in zip(net._layer_names, net.layers)  # noqa: B905 (3.9)
                   if layer.type != "Split"],
    }
    with open(os.path.join(folder, "result.json"), "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1])
