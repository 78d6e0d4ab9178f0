"""The simulator: the engine's scheduler core on a virtual clock, with per-layer times from
profiled packages or a device profile, and the original's weightless "generated" networks."""

from edgecaffe.sim.device import DEVICES, DeviceError, DeviceProfile, load_device
from edgecaffe.sim.generated import is_generated_folder, read_generated
from edgecaffe.sim.simulator import Simulator

__all__ = ["DEVICES", "DeviceError", "DeviceProfile", "Simulator", "is_generated_folder",
           "load_device", "read_generated"]
