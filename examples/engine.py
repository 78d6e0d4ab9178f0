"""Several networks on one engine under a memory budget, with the Masa scheduler.

    python examples/engine.py
"""

import edgecaffe
from edgecaffe.model.preprocess import sample_image
from edgecaffe.model.zoo import zoo_package

networks = ["GenderNet", "AgeNet", "FaceNet"]
packages = {name: zoo_package(name) for name in networks}  # name -> package

with edgecaffe.Engine(packages, mode="masa", budget="512M", workers=2) as engine:
    futures = [engine.submit(sample_image(), networks) for _ in range(3)]
    for future in futures:
        result = future.result()  # {"GenderNet": {"prob": ...}, "AgeNet": ..., "FaceNet": ...}
        print({name: outputs["prob"].argmax() for name, outputs in result.items()})
        print({name: f"load {n.load_ms:.0f} ms, exec {n.exec_ms:.0f} ms"
               for name, n in result.networks.items()})

trace = engine.trace
for request in trace.requests.values():
    spans = {name: f"{(end - request.arrival_s) * 1e3:.0f} ms"
             for name, (_, end) in request.network_spans.items()}
    print(f"request {request.request_id}: {spans}")
print(f"peak of the memory ledger: {max(e.used_bytes for e in trace.ledger) / 2**20:.0f} MiB")
