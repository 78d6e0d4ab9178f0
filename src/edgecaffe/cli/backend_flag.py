"""`--backend`: the kernels a command runs on (shared by run, profile, experiment, demo)."""

from __future__ import annotations

#: The same names as `edgecaffe.ops.BACKENDS` (a test keeps them equal); spelled out here so
#: that building the parser does not import the kernels.
CHOICES = ("numpy", "onnxruntime")


def add_backend_flag(parser) -> None:
    parser.add_argument("--backend", choices=CHOICES, default="numpy",
                        help="kernels: numpy (default, the reference) or onnxruntime (heavy "
                        "operators as one-operator onnxruntime sessions; pip install "
                        "'edgecaffe[fast]')")
