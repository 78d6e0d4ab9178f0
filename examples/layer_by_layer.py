"""Split a model into a package (one weight file per layer) and run it layer by layer:
load layer i, execute it, free it, so only one layer's weights are in memory at a time.

    python examples/layer_by_layer.py [PACKAGE_DIR]
"""

import sys

import edgecaffe
from edgecaffe.model.package import split
from edgecaffe.model.preprocess import preprocess, sample_image

folder = sys.argv[1] if len(sys.argv) > 1 else "packages/GenderNet"
split(["GenderNet"], folder)  # a zoo name, an original network folder, or prototxt + caffemodel

package = edgecaffe.open_package(folder)  # reads the manifest only
x = preprocess(sample_image(), package.input_shape, mean=package.meta["mean"])

weights = package.load("fc6")  # one layer's weights, nothing else
print("fc6:", {name: array.shape for name, array in weights.items()})
package.free("fc6")

print(package.forward(x)["prob"])  # load, execute, free, layer after layer
