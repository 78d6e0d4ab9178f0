"""Caffe import and export: prototxt, caffemodel (V1 and V2), synthetic weights."""

from edgecaffe.model.caffe.caffemodel import CaffeModelReader, LayerBlobs, write_caffemodel
from edgecaffe.model.caffe.importer import build_layers, load_caffe, load_caffe_weights
from edgecaffe.model.caffe.prototxt import CaffeError, parse_prototxt, read_prototxt

__all__ = [
    "CaffeError", "CaffeModelReader", "LayerBlobs", "build_layers", "load_caffe",
    "load_caffe_weights", "parse_prototxt", "read_prototxt", "write_caffemodel",
]
