"""Network statistics: per-layer weight and activation bytes, FLOPs, and measured times.

    python examples/network_stats.py [NETWORK]
"""

import sys

from edgecaffe.model.package.profile import profile_package
from edgecaffe.model.zoo import zoo_package

package = zoo_package(sys.argv[1] if len(sys.argv) > 1 else "SoS")
summary = profile_package(package, runs=3)  # medians over 3 layer-by-layer passes

print(f"{'layer':<12} {'op':<8} {'weights MB':>10} {'output MB':>9} {'MFLOP':>8} "
      f"{'load ms':>8} {'exec ms':>8}")
for entry in package.manifest["layers"]:
    profile = entry["profile"]
    print(f"{entry['name']:<12} {entry['op']:<8} {profile['weight_bytes'] / 1e6:>10.2f} "
          f"{entry['output_bytes'] / 1e6:>9.2f} {entry['flops'] / 1e6:>8.1f} "
          f"{profile['load_ms']:>8.2f} {profile['exec_ms']:>8.2f}")
print(f"mean execution {summary['mean_exec_ms']:.1f} ms; peak RSS above idle: whole model "
      f"{summary['peak_rss_whole_model_bytes'] / 2**20:.0f} MiB, layer by layer "
      f"{summary['peak_rss_layer_by_layer_bytes'] / 2**20:.0f} MiB")
