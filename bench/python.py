"""`model.forward` from Python against `whitebox bench`'s inference rate, in one run on one machine.

    bash scripts/test.sh            # or: python3 -m venv .venv && .venv/bin/pip install ./python
    .venv/bin/python bench/python.py [ROUNDS]

Prints the CPU model, its ISA flags and a table: the CLI's inference rate (median of its steps)
and the Python call's (median of ROUNDS forwards of the same 128-image batch of the main-job model,
numpy in and out).
"""

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import whitebox

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 20


def cpu():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), platform.processor())
    flags = next((l.split(":", 1)[1].split() for l in text.splitlines() if l.startswith("flags")), [])
    isa = [f for f in ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"] if f in flags]
    return model, isa


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    model_name, isa = cpu()
    print(f"CPU: {model_name}; ISA: {' '.join(isa) or 'none of avx2/avx512/amx'}")
    cli = ROOT / "target" / "release" / "whitebox"
    out = subprocess.run([str(cli), "bench", "--config", "fmnist", "--batch-size", "128", "--steps", str(ROUNDS),
                          "--json"], check=True, capture_output=True, text=True).stdout
    bench = json.loads(out.strip().splitlines()[-1])
    model = whitebox.create("fmnist")
    x = np.random.default_rng(0).standard_normal((128, 1, 28, 28)).astype(np.float32)
    for _ in range(3):
        model.forward(x)
    times = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        model.forward(x)
        times.append(time.perf_counter() - t)
    py_rate = 128 / median(times)
    cli_rate = bench["infer_img_s"]
    print(f"| main-job model, batch 128 | img/s | ratio |")
    print(f"|---|---|---|")
    print(f"| `whitebox bench` inference | {cli_rate:,.1f} | 1.00 |")
    print(f"| Python `model.forward` | {py_rate:,.1f} | {py_rate / cli_rate:.3f} |")


if __name__ == "__main__":
    main()
