"""Does graft's mallopt start-up tuning (graft/_util/malloc.py) speed up the CPU forward pass?

Runs EfficientNet-Lite0's forward pass (batch 32, 224 px, channels_last as graft extracts) in
two fresh processes, with GRAFT_NO_MALLOPT=1 and without, and prints both and the ratio.

    .venv/bin/python bench/malloc_tuning.py
"""

import json
import os
import subprocess
import sys

CHILD = r"""
import json, time, torch, graft
from graft._util.malloc import _applied
from graft.backbones import load_backbone
b = load_backbone().eval().to(memory_format=torch.channels_last)
x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
times = []
with torch.inference_mode():
    for _ in range(8):
        t = time.perf_counter(); b(x); times.append(time.perf_counter() - t)
times = sorted(times[1:])
print(json.dumps({"median_s": times[len(times) // 2], "best_s": times[0], "tuned": _applied}))
"""


def run(no_mallopt: bool) -> dict:
    env = dict(os.environ)
    env.pop("GRAFT_NO_MALLOPT", None)
    if no_mallopt:
        env["GRAFT_NO_MALLOPT"] = "1"
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    off = run(True)
    on = run(False)
    ratio = off["median_s"] / on["median_s"]
    print(f"glibc defaults   {off['median_s'] * 1000:7.1f} ms per batch of 32 (median of 7)")
    print(f"graft's mallopt  {on['median_s'] * 1000:7.1f} ms per batch of 32 (applied: {on['tuned']})")
    print(f"speed-up {ratio:.2f}x")
    print(json.dumps({"ms_default": round(off["median_s"] * 1000, 1), "ms_mallopt": round(on["median_s"] * 1000, 1),
                      "ratio": round(ratio, 2)}))


if __name__ == "__main__":
    main()
