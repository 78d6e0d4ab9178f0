"""A plain forward pass: a Caffe model (here the zoo's AgeNet) on an image, top classes printed.

    python examples/forward.py [IMAGE]
"""

import sys

import edgecaffe
from edgecaffe.model.preprocess import load_image, preprocess, sample_image
from edgecaffe.model.zoo import ZOO, zoo_files

prototxt, caffemodel = zoo_files("AgeNet")  # any deploy prototxt + caffemodel works here
net = edgecaffe.load_caffe(prototxt, caffemodel)
image = load_image(sys.argv[1]) if len(sys.argv) > 1 else sample_image()
x = preprocess(image, net.input_shape, mean=ZOO["AgeNet"].mean_bgr)  # NCHW float32, BGR

outputs = net.forward(x)  # {"prob": array of shape (1, 8)}
probabilities = outputs["prob"][0]
labels = ZOO["AgeNet"].labels
for index in probabilities.argsort()[::-1][:3]:
    print(f"{labels[index]:>8}  {probabilities[index]:.3f}")

features = net.forward(x, outputs=["fc7"])["fc7"]  # any blob, by its Caffe name
print("fc7 features:", features.shape)
