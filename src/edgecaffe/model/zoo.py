"""The networks of the original EdgeCaffe experiments, defined here, plus tiny ones for tests.

Each definition builds a Caffe deploy prototxt; `write_zoo_model` adds seeded synthetic weights
(the trained weights are not redistributable), producing a real prototxt + caffemodel pair that
Caffe, OpenCV and EdgeCaffe all read. Batch 1 by default.
"""

from __future__ import annotations

import difflib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from edgecaffe.model.caffe.schema import message_class
from edgecaffe.model.errors import ModelError

IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)
ADIENCE_MEAN_BGR = (78.4263377603, 87.7689143744, 114.895847746)


class NetBuilder:
    """Appends Caffe layers to a NetParameter; each method returns the blob it wrote."""

    def __init__(self, name: str, input_shape: tuple[int, ...], legacy_input: bool = True) -> None:
        self.net = message_class("NetParameter")(name=name)
        if legacy_input:
            self.net.input.append("data")
            self.net.input_dim.extend(input_shape)
        else:
            layer = self._layer("data", "Input", [], ["data"])
            layer.input_param.shape.add(dim=input_shape)

    def _layer(self, name: str, type_: str, bottom: list[str], top: list[str]):
        layer = self.net.layer.add(name=name, type=type_)
        layer.bottom.extend(bottom)
        layer.top.extend(top)
        return layer

    def conv(self, name: str, bottom: str, out: int, k: int, s: int = 1, p: int = 0,
             group: int = 1, bias: bool = True, top: str | None = None) -> str:
        param = self._layer(name, "Convolution", [bottom], [top or name]).convolution_param
        param.num_output, param.bias_term = out, bias
        param.kernel_size.append(k)
        if s != 1:
            param.stride.append(s)
        if p:
            param.pad.append(p)
        if group != 1:
            param.group = group
        return top or name

    def relu(self, name: str, blob: str, slope: float = 0.0) -> str:
        layer = self._layer(name, "ReLU", [blob], [blob])
        if slope:
            layer.relu_param.negative_slope = slope
        return blob

    def pool(self, name: str, bottom: str, k: int, s: int, p: int = 0, method: str = "MAX",
             top: str | None = None) -> str:
        param = self._layer(name, "Pooling", [bottom], [top or name]).pooling_param
        param.pool = {"MAX": 0, "AVE": 1}[method]
        param.kernel_size, param.stride = k, s
        if p:
            param.pad = p
        return top or name

    def lrn(self, name: str, bottom: str, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
            k: float = 1.0) -> str:
        param = self._layer(name, "LRN", [bottom], [name]).lrn_param
        param.local_size, param.alpha, param.beta, param.k = size, alpha, beta, k
        return name

    def fc(self, name: str, bottom: str, out: int, top: str | None = None) -> str:
        layer = self._layer(name, "InnerProduct", [bottom], [top or name])
        layer.inner_product_param.num_output = out
        return top or name

    def dropout(self, name: str, blob: str, ratio: float = 0.5) -> str:
        self._layer(name, "Dropout", [blob], [blob]).dropout_param.dropout_ratio = ratio
        return blob

    def softmax(self, name: str, bottom: str, top: str = "prob") -> str:
        self._layer(name, "Softmax", [bottom], [top])
        return top

    def batchnorm(self, name: str, bottom: str) -> str:
        param = self._layer(name, "BatchNorm", [bottom], [name]).batch_norm_param
        param.use_global_stats, param.eps = True, 1e-5
        return name

    def scale(self, name: str, bottom: str) -> str:
        self._layer(name, "Scale", [bottom], [name]).scale_param.bias_term = True
        return name

    def concat(self, name: str, bottoms: list[str]) -> str:
        self._layer(name, "Concat", bottoms, [name])
        return name

    def eltwise_sum(self, name: str, bottoms: list[str]) -> str:
        self._layer(name, "Eltwise", bottoms, [name])
        return name

    def prototxt(self) -> str:
        return text_format.MessageToString(self.net)


# -- the ten networks of the original experiments ----------------------------------------------


def _levi_hassner(name: str, classes: int, batch: int) -> NetBuilder:
    """AgeNet / GenderNet (Levi & Hassner): 3 conv, 3 fc, 7x7 conv1 with stride 4."""
    n = NetBuilder(name, (batch, 3, 227, 227))
    x = n.relu("relu1", n.conv("conv1", "data", 96, 7, s=4))
    x = n.lrn("norm1", n.pool("pool1", x, 3, 2))
    x = n.relu("relu2", n.conv("conv2", x, 256, 5, p=2))
    x = n.lrn("norm2", n.pool("pool2", x, 3, 2))
    x = n.relu("relu3", n.conv("conv3", x, 384, 3, p=1))
    x = n.pool("pool5", x, 3, 2)
    x = n.dropout("drop6", n.relu("relu6", n.fc("fc6", x, 512)))
    x = n.dropout("drop7", n.relu("relu7", n.fc("fc7", x, 512)))
    n.softmax("prob", n.fc("fc8", x, classes))
    return n


def _alexnet_features(n: NetBuilder, size_conv1: int = 11) -> str:
    """CaffeNet's five conv layers (conv1..pool5), shared by FaceNet, MemNet, SceneNet, SoS."""
    x = n.relu("relu1", n.conv("conv1", "data", 96, size_conv1, s=4))
    x = n.lrn("norm1", n.pool("pool1", x, 3, 2))
    x = n.relu("relu2", n.conv("conv2", x, 256, 5, p=2, group=2))
    x = n.lrn("norm2", n.pool("pool2", x, 3, 2))
    x = n.relu("relu3", n.conv("conv3", x, 384, 3, p=1))
    x = n.relu("relu4", n.conv("conv4", x, 384, 3, p=1, group=2))
    x = n.relu("relu5", n.conv("conv5", x, 256, 3, p=1, group=2))
    return n.pool("pool5", x, 3, 2)


def _alexnet(name: str, outputs: int, batch: int, top: str, softmax: bool = True,
             dropout: bool = True) -> NetBuilder:
    n = NetBuilder(name, (batch, 3, 227, 227))
    x = _alexnet_features(n)
    x = n.relu("relu6", n.fc("fc6", x, 4096))
    if dropout:
        x = n.dropout("drop6", x)
    x = n.relu("relu7", n.fc("fc7", x, 4096))
    if dropout:
        x = n.dropout("drop7", x)
    x = n.fc(top, x, outputs)
    if softmax:
        n.softmax("prob", x)
    return n


def age_net(batch: int = 1) -> NetBuilder:
    return _levi_hassner("AgeNet", 8, batch)


def gender_net(batch: int = 1) -> NetBuilder:
    return _levi_hassner("GenderNet", 2, batch)


def face_net(batch: int = 1) -> NetBuilder:
    """Fully convolutional CaffeNet face detector: fc6..fc8 as convolutions."""
    n = NetBuilder("FaceNet", (batch, 3, 227, 227))
    x = _alexnet_features(n)
    x = n.dropout("drop6", n.relu("relu6", n.conv("fc6-conv", x, 4096, 6)))
    x = n.dropout("drop7", n.relu("relu7", n.conv("fc7-conv", x, 4096, 1)))
    n.softmax("prob", n.conv("fc8-conv", x, 2, 1))
    return n


def emotion_net(batch: int = 1) -> NetBuilder:
    """VGG_S (EmotiW): 7x7/2 conv1, LRN before pool1, 3x3/3 pools."""
    n = NetBuilder("EmotionNet", (batch, 3, 224, 224))
    x = n.relu("relu1", n.conv("conv1", "data", 96, 7, s=2))
    x = n.pool("pool1", n.lrn("norm1", x, alpha=5e-4, k=2.0), 3, 3)
    x = n.pool("pool2", n.relu("relu2", n.conv("conv2", x, 256, 5)), 2, 2)
    x = n.relu("relu3", n.conv("conv3", x, 512, 3, p=1))
    x = n.relu("relu4", n.conv("conv4", x, 512, 3, p=1))
    x = n.pool("pool5", n.relu("relu5", n.conv("conv5", x, 512, 3, p=1)), 3, 3)
    x = n.dropout("drop6", n.relu("relu6", n.fc("fc6", x, 4096)))
    x = n.dropout("drop7", n.relu("relu7", n.fc("fc7", x, 4096)))
    n.softmax("prob", n.fc("fc8_cat_e", x, 7, top="fc8"))
    return n


def mem_net(batch: int = 1) -> NetBuilder:
    return _alexnet("MemNet", 1, batch, "fc8-euclidean", softmax=False)


def scene_net(batch: int = 1) -> NetBuilder:
    return _alexnet("SceneNet", 205, batch, "fc8")


def sos_net(batch: int = 1) -> NetBuilder:
    return _alexnet("SoS", 5, batch, "fc8_sbt", dropout=False)


def object_net(batch: int = 1) -> NetBuilder:
    """VGG-19: sixteen 3x3 convolutions in five blocks, three fc layers."""
    n = NetBuilder("ObjectNet", (batch, 3, 224, 224))
    x = "data"
    for block, (convs, width) in enumerate([(2, 64), (2, 128), (4, 256), (4, 512), (4, 512)], 1):
        for i in range(1, convs + 1):
            x = n.relu(f"relu{block}_{i}", n.conv(f"conv{block}_{i}", x, width, 3, p=1))
        x = n.pool(f"pool{block}", x, 2, 2)
    x = n.dropout("drop6", n.relu("relu6", n.fc("fc6", x, 4096)))
    x = n.dropout("drop7", n.relu("relu7", n.fc("fc7", x, 4096)))
    n.softmax("prob", n.fc("fc8", x, 1000))
    return n


def _inception(n: NetBuilder, name: str, x: str, c1: int, r3: int, c3: int, r5: int, c5: int,
               proj: int) -> str:
    p = f"inception_{name}"
    b1 = n.relu(f"{p}/relu_1x1", n.conv(f"{p}/1x1", x, c1, 1))
    b3 = n.relu(f"{p}/relu_3x3_reduce", n.conv(f"{p}/3x3_reduce", x, r3, 1))
    b3 = n.relu(f"{p}/relu_3x3", n.conv(f"{p}/3x3", b3, c3, 3, p=1))
    b5 = n.relu(f"{p}/relu_5x5_reduce", n.conv(f"{p}/5x5_reduce", x, r5, 1))
    b5 = n.relu(f"{p}/relu_5x5", n.conv(f"{p}/5x5", b5, c5, 5, p=2))
    bp = n.pool(f"{p}/pool", x, 3, 1, p=1)
    bp = n.relu(f"{p}/relu_pool_proj", n.conv(f"{p}/pool_proj", bp, proj, 1))
    return n.concat(f"{p}/output", [b1, b3, b5, bp])


def sos_googlenet(batch: int = 1) -> NetBuilder:
    """GoogLeNet (BVLC) with a 5-way SoS classifier; blobs read by several layers get Splits."""
    n = NetBuilder("SoS_GoogleNet", (batch, 3, 224, 224), legacy_input=False)
    x = n.relu("conv1/relu_7x7", n.conv("conv1/7x7_s2", "data", 64, 7, s=2, p=3))
    x = n.lrn("pool1/norm1", n.pool("pool1/3x3_s2", x, 3, 2))
    x = n.relu("conv2/relu_3x3_reduce", n.conv("conv2/3x3_reduce", x, 64, 1))
    x = n.relu("conv2/relu_3x3", n.conv("conv2/3x3", x, 192, 3, p=1))
    x = n.pool("pool2/3x3_s2", n.lrn("conv2/norm2", x), 3, 2)
    x = _inception(n, "3a", x, 64, 96, 128, 16, 32, 32)
    x = _inception(n, "3b", x, 128, 128, 192, 32, 96, 64)
    x = n.pool("pool3/3x3_s2", x, 3, 2)
    for name, widths in [("4a", (192, 96, 208, 16, 48, 64)), ("4b", (160, 112, 224, 24, 64, 64)),
                         ("4c", (128, 128, 256, 24, 64, 64)), ("4d", (112, 144, 288, 32, 64, 64)),
                         ("4e", (256, 160, 320, 32, 128, 128))]:
        x = _inception(n, name, x, *widths)
    x = n.pool("pool4/3x3_s2", x, 3, 2)
    x = _inception(n, "5a", x, 256, 160, 320, 32, 128, 128)
    x = _inception(n, "5b", x, 384, 192, 384, 48, 128, 128)
    x = n.pool("pool5/7x7_s1", x, 7, 1, method="AVE")
    x = n.dropout("pool5/drop_7x7_s1", x, 0.4)
    x = n.fc("loss3/classifier-sos", x, 5, top="loss3/classifier")
    n.softmax("loss3/loss3", x)
    return n


def tiny_yolo(batch: int = 1) -> NetBuilder:
    """Tiny YOLO v2 (COCO): bias-free conv + BatchNorm + Scale + leaky ReLU; raw 425-ch output."""
    n = NetBuilder("TinyYolo", (batch, 3, 416, 416), legacy_input=False)
    x = "data"
    for i, width in enumerate([16, 32, 64, 128, 256, 512, 1024, 1024], 1):
        x = n.conv(f"conv{i}", x, width, 3, p=1, bias=False)
        x = n.scale(f"conv{i}_scale", n.batchnorm(f"conv{i}_bn", x))
        x = n.relu(f"relu{i}", x, slope=0.1)
        if i <= 6:
            x = n.pool(f"pool{i}", x, 2, 2 if i < 6 else 1)
    n.conv("conv9", x, 425, 1, top="result")
    return n


# -- tiny networks for fast tests ---------------------------------------------------------------


def tiny_alexnet(batch: int = 1) -> NetBuilder:
    n = NetBuilder("TinyAlex", (batch, 3, 35, 35))
    x = n.relu("relu1", n.conv("conv1", "data", 8, 5, s=2))
    x = n.lrn("norm1", n.pool("pool1", x, 3, 2))
    x = n.relu("relu2", n.conv("conv2", x, 12, 3, p=1, group=2))
    x = n.pool("pool2", x, 3, 2)
    x = n.dropout("drop3", n.relu("relu3", n.fc("fc3", x, 32)))
    n.softmax("prob", n.fc("fc4", x, 5))
    return n


def tiny_inception(batch: int = 1) -> NetBuilder:
    n = NetBuilder("TinyInception", (batch, 3, 24, 24), legacy_input=False)
    x = n.relu("conv1/relu", n.conv("conv1", "data", 8, 3, s=2, p=1))
    x = _inception(n, "a", x, 4, 4, 6, 2, 4, 4)
    x = n.pool("pool", x, 3, 1, method="AVE", p=1)
    x = n.pool("gap", x, 12, 1, method="AVE")
    n.softmax("prob", n.fc("fc", x, 3))
    return n


def tiny_residual(batch: int = 1) -> NetBuilder:
    n = NetBuilder("TinyResidual", (batch, 3, 20, 20), legacy_input=False)
    x = n.relu("relu1", n.scale("scale1", n.batchnorm("bn1", n.conv("conv1", "data", 8, 3, p=1,
                                                                       bias=False))), slope=0.1)
    y = n.relu("relu2", n.conv("conv2", x, 8, 3, p=1))
    y = n.scale("scale2", n.batchnorm("bn2", y))
    x = n.relu("relu3", n.eltwise_sum("sum", [x, y]))
    x = n.pool("pool", x, 2, 2)
    n.softmax("prob", n.fc("fc", x, 4))
    return n


@dataclass(frozen=True)
class ZooModel:
    name: str
    build: Callable[[int], NetBuilder]
    summary: str
    mean_bgr: tuple[float, float, float] = IMAGENET_MEAN_BGR
    labels: tuple[str, ...] = ()
    #: Mean execution time on a Raspberry Pi, from the original's descriptions (Masa's SNF key).
    original_mean_exec_ms: float | None = None
    tiny: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def prototxt(self, batch: int = 1) -> str:
        return self.build(batch).prototxt()

    @property
    def meta(self) -> dict[str, Any]:
        return {"mean": list(self.mean_bgr), "scale": 1.0, "channel_order": "BGR",
                "labels": list(self.labels)}


AGE_LABELS = ("0-2", "4-6", "8-12", "15-20", "25-32", "38-43", "48-53", "60-100")
ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in [
        ZooModel("AgeNet", age_net, "age group, 8 classes (Levi-Hassner)", ADIENCE_MEAN_BGR,
                 AGE_LABELS, 294),
        ZooModel("GenderNet", gender_net, "gender, 2 classes (Levi-Hassner)", ADIENCE_MEAN_BGR,
                 ("male", "female"), 587),
        ZooModel("FaceNet", face_net, "face / no face, fully convolutional CaffeNet",
                 labels=("no face", "face"), original_mean_exec_ms=631),
        ZooModel("EmotionNet", emotion_net, "emotion, 7 classes (VGG_S)",
                 labels=("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"),
                 original_mean_exec_ms=1057),
        ZooModel("MemNet", mem_net, "image memorability, regression (AlexNet)",
                 original_mean_exec_ms=1495),
        ZooModel("ObjectNet", object_net, "objects, 1000 ImageNet classes (VGG-19)",
                 original_mean_exec_ms=13138),
        ZooModel("SceneNet", scene_net, "scene, 205 Places classes (AlexNet)",
                 original_mean_exec_ms=2105),
        ZooModel("SoS", sos_net, "salient object count 0-4+ (AlexNet)",
                 labels=("0", "1", "2", "3", "4+"), original_mean_exec_ms=937),
        ZooModel("SoS_GoogleNet", sos_googlenet, "salient object count 0-4+ (GoogLeNet)",
                 labels=("0", "1", "2", "3", "4+")),
        ZooModel("TinyYolo", tiny_yolo, "object detection grid, raw 425-channel output",
                 mean_bgr=(0.0, 0.0, 0.0), original_mean_exec_ms=696),
        ZooModel("TinyAlex", tiny_alexnet, "tiny test network: conv, LRN, group conv, fc",
                 tiny=True),
        ZooModel("TinyInception", tiny_inception, "tiny test network: inception block, avg pool",
                 tiny=True),
        ZooModel("TinyResidual", tiny_residual, "tiny test network: BatchNorm, Scale, Eltwise",
                 tiny=True),
    ]
}


def get_zoo_model(name: str) -> ZooModel:
    for key, model in ZOO.items():
        if key.lower() == name.lower():
            return model
    close = difflib.get_close_matches(name.lower(), [key.lower() for key in ZOO], n=1)
    hint = next((f"; did you mean {key}?" for key in ZOO if close and key.lower() == close[0]),
                "")
    raise ModelError(f"no zoo network {name!r}{hint} (the zoo has: {', '.join(ZOO)})")


def write_zoo_model(
    name: str, directory: str | Path, seed: int = 0, batch: int = 1,
    progress: Callable[[str, int], None] | None = None,
) -> tuple[Path, Path]:
    """Write `NAME.prototxt` and `NAME.caffemodel` (seeded synthetic weights) into `directory`."""
    from edgecaffe.model.caffe.synth import synthesize_caffemodel

    model = get_zoo_model(name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prototxt = directory / f"{model.name}.prototxt"
    caffemodel = directory / f"{model.name}.caffemodel"
    prototxt.write_text(model.prototxt(batch))
    synthesize_caffemodel(prototxt, caffemodel, seed=seed, progress=progress)
    return prototxt, caffemodel


def cache_dir() -> Path:
    """Where zoo models are written on first use: $EDGECAFFE_CACHE or ~/.cache/edgecaffe."""
    import os

    return Path(os.environ.get("EDGECAFFE_CACHE") or Path.home() / ".cache" / "edgecaffe")


def zoo_files(name: str, seed: int = 0, batch: int = 1,
              progress: Callable[[str, int], None] | None = None) -> tuple[Path, Path]:
    """The prototxt and caffemodel of a zoo network, written to the cache if not there yet."""
    model = get_zoo_model(name)
    directory = cache_dir() / "zoo" / f"seed{seed}-batch{batch}"
    prototxt = directory / f"{model.name}.prototxt"
    caffemodel = directory / f"{model.name}.caffemodel"
    if not (caffemodel.exists() and prototxt.exists()
            and prototxt.read_text() == model.prototxt(batch)):
        # Written beside, then moved in (the caffemodel first): a write cut short leaves no
        # truncated caffemodel under a matching prototxt, which this check would take as whole.
        directory.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{model.name}.partial-", dir=directory))
        try:
            write_zoo_model(model.name, partial, seed=seed, batch=batch, progress=progress)
            (partial / caffemodel.name).replace(caffemodel)
            (partial / prototxt.name).replace(prototxt)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return prototxt, caffemodel


def zoo_package(name: str, seed: int = 0, batch: int = 1, profile_runs: int = 0,
                input_size: tuple[int, int] | None = None):
    """A zoo network as a model package in the cache (split on first use); with
    `profile_runs`, profiled so schedulers know its per-layer and mean times: again whenever
    the stored profile is stale (another host, or too old: `profile.stale_reasons`; a profile
    that was doubtful when taken is kept, with its warnings, until `edgecaffe profile
    --refresh`). `input_size` (H, W) runs a fully convolutional network (FaceNet) at that
    size instead of its prototxt's (the original's `use-scales` FaceNet runs at 1340 x 1340)."""
    from edgecaffe.model.package import split
    from edgecaffe.model.package.cached import cached_package
    from edgecaffe.model.package.profile import profile_package, stale_reasons

    model = get_zoo_model(name)
    size = "" if input_size is None else f"-{input_size[0]}x{input_size[1]}"
    directory = cache_dir() / "packages" / f"seed{seed}-batch{batch}" / f"{model.name}{size}"
    package = cached_package(directory, lambda folder: split(
        [model.name], folder, seed=seed, batch=batch, input_shape=input_size))
    if profile_runs and stale_reasons(package.manifest, doubts=False):
        profile_package(package, runs=profile_runs)
        package.save_manifest()
    return package
