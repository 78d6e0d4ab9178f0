"""A small experiment from Python: Poisson arrivals, masa against bulk, same arrivals for both
(one seed), results folders written.

    python examples/experiment.py [RESULTS_DIR]
"""

import sys

from edgecaffe.experiment import run_once
from edgecaffe.model.zoo import zoo_package
from edgecaffe.workload import poisson

results = sys.argv[1] if len(sys.argv) > 1 else "results"
networks = ["GenderNet", "AgeNet"]
packages = {name: zoo_package(name, profile_runs=3) for name in networks}
arrivals = poisson(networks, count=8, mean_gap_ms=60.0, seed=1)  # the same for every mode

for mode in ["masa", "bulk"]:
    summary, _ = run_once(packages, arrivals, mode=mode, budget="256M", closed_loop=False,
                          output=f"{results}/{mode}")
    print(f"{mode:<5} mean response {summary['mean_network_response_ms']:.0f} ms, "
          f"p95 {summary['p95_response_ms']:.0f} ms, peak RSS "
          f"{summary['peak_rss_bytes'] / 2**20:.0f} MiB")
