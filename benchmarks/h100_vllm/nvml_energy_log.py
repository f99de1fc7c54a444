"""Independent NVML energy log: the GPU's total-energy counter every 50 ms, one CSV line each.

Runs beside `jouletune bench` on the H100 so that each window's energy from the exporter can be
checked against a second, independent read of the same counter (read-only: changes nothing).
Usage: python nvml_energy_log.py OUT.csv [GPU_INDEX]
"""

from __future__ import annotations

import sys
import time

import pynvml


def main() -> None:
    out_path = sys.argv[1]
    index = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    with open(out_path, "w", buffering=1) as out:
        out.write("unix_s,energy_j\n")
        while True:
            before = time.time()
            energy_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            # The read takes ~3 ms on the H100: stamp it at the middle of the call.
            stamp = (before + time.time()) / 2
            out.write(f"{stamp:.6f},{energy_mj / 1000.0:.3f}\n")
            time.sleep(0.05)


if __name__ == "__main__":
    main()
