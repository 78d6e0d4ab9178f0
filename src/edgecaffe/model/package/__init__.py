"""Model packages: a manifest plus one weight file per layer, loaded and freed per layer."""

from edgecaffe.model.package.manifest import FORMAT, PackageError
from edgecaffe.model.package.package import ModelPackage, open_package
from edgecaffe.model.package.split import onnx_package, split, split_onnx, write_package
from edgecaffe.model.package.tensorfile import WeightFileError, drop_page_cache

__all__ = ["FORMAT", "ModelPackage", "PackageError", "WeightFileError", "drop_page_cache",
           "onnx_package", "open_package", "split", "split_onnx", "write_package"]
