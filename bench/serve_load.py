"""`graft serve` under load: N concurrent clients on loopback, micro-batched vs one photo per pass.

Two real servers (`graft serve RUN`, separate processes) serve the same run: one batching
(--max-batch 16, the default) and one answering one photo per forward pass (--max-batch 1).
The load alternates between them in rounds (A B, B A, ...) so machine noise hits both alike.
Each client POSTs one photo's bytes, waits for the answer, and sends the next, until the phase's
time or request count runs out. Reported per side: photos/s, p50/p99 latency, errors, the
server's peak resident memory (VmHWM) and its batch sizes (from /health).

The photos are hymenoptera's val photos when ../shared has them, else generated ones; the run
is `--run RUN`, or a head run trained here on generated photos (what the server costs is the
backbone's forward pass and decoding, whichever head sits on top).

    .venv/bin/python bench/serve_load.py                   # 16 clients, 30 s per side
    .venv/bin/python bench/serve_load.py --duration 8      # shorter, on a shared machine

`--bounded` is the hostile load test instead (issue 22, findings 15 and 16): one `graft serve` of a
head run trained on hymenoptera (skipped without ../shared), 16 clients on loopback for
`--duration` s: 12 post hymenoptera's val photos, 2 post 8000x7999 PNGs (64 megapixels each,
decoded) and multiparts of 64 of them (refused from their headers), 2 hold up to 100 half-sent
requests each, reopening every one the server closes. It reports whether the server stayed up, the
p50/p99 latency of the ordinary photos, every status, the half-sent requests the server cut off,
its peak and resting RSS, and the RSS bound its settings imply (`rss_bound_mb`: resident memory
before the load + what the decoders and the bodies in flight may hold):

    .venv/bin/python bench/serve_load.py --bounded --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HYMENOPTERA, emit, need_hymenoptera  # noqa: E402


def generated_photo(rng, kind: str, size=(500, 375)) -> Image.Image:
    w, h = size
    img = Image.fromarray(rng.integers(60, 190, size=(h, w, 3), dtype=np.uint8))
    d = ImageDraw.Draw(img)
    x0, y0 = int(rng.integers(0, w // 3)), int(rng.integers(0, h // 3))
    box = [x0, y0, x0 + w // 2, y0 + h // 2]
    if kind == "red":
        d.ellipse(box, fill=(220, int(rng.integers(0, 40)), 30))
    else:
        d.rectangle(box, fill=(20, 40, 230 - int(rng.integers(0, 40))))
    return img


def make_photos(root: Path, n: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = ("blue", "red")[i % 2]
        (root / kind).mkdir(parents=True, exist_ok=True)
        path = root / kind / f"{kind}{i:03d}.jpg"
        generated_photo(rng, kind).save(path, quality=90)
        out.append(path)
    return out


def load_photos(tmp: Path) -> tuple[list[bytes], str]:
    val = HYMENOPTERA / "val"
    if val.is_dir():
        files = sorted(p for p in val.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        return [p.read_bytes() for p in files], f"hymenoptera val ({len(files)} photos)"
    files = make_photos(tmp / "load-photos", 48, seed=1)
    return [p.read_bytes() for p in files], f"generated ({len(files)} photos, 500x375 JPEG)"


def train_run(tmp: Path) -> Path:
    import graft

    photos = tmp / "train-photos"
    make_photos(photos, 24, seed=0)
    run = tmp / "run"
    print("training a head run on generated photos ...", file=sys.stderr)
    graft.train(photos, run, cache_dir=tmp / "cache", workers=0, progress=False, report=False)
    return run


class Server:
    def __init__(self, run: Path, name: str, max_batch: int, window_ms: float, threads, env: dict,
                 engine: str = "auto"):
        self.name, self.max_batch = name, max_batch
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "graft", "serve", str(run), "--port", "0", "--max-batch", str(max_batch),
             "--batch-window-ms", str(window_ms), "--reject", "none", "--engine", engine]
            + (["--threads", str(threads)] if threads else []),
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.url = None
        for line in self.proc.stderr:
            m = re.search(r"on (http://[\d.]+:\d+)/", line)
            if m:
                self.url = m.group(1)
                break
        if self.url is None:
            raise SystemExit(f"{name}: graft serve did not start")

    def wait_ready(self):
        for _ in range(600):
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise SystemExit(f"{self.name}: no answer on {self.url}")

    def peak_rss_mb(self) -> float:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=30).json()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def load_phase(url: str, photos: list[bytes], clients: int, seconds: float, max_requests: int,
                     offset: int) -> dict:
    """`clients` loops of POST-and-wait; -> latencies (s) of answered photos, errors, wall time."""
    latencies, errors = [], []
    counter = iter(range(max_requests))
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one_client():
            while time.perf_counter() < deadline:
                i = next(counter, None)
                if i is None:
                    return
                body = photos[(offset + i) % len(photos)]
                t0 = time.perf_counter()
                try:
                    r = await client.post("/predict", content=body, headers={"content-type": "image/jpeg"})
                    ok = r.status_code == 200 and "predictions" in r.json()["results"][0]
                    (latencies if ok else errors).append(time.perf_counter() - t0 if ok else r.status_code)
                except httpx.HTTPError as e:
                    errors.append(type(e).__name__)

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "wall": wall}


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


LOAD_BEFORE = round(os.getloadavg()[0], 2)


def main():
    if "--bounded" in sys.argv:
        sys.argv.remove("--bounded")
        return bounded_main()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="run folder to serve (default: train a small head run here)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load per side (default 30)")
    ap.add_argument("--rounds", type=int, default=3, help="alternations A B / B A the duration is split into")
    ap.add_argument("--max-requests", type=int, default=100_000, help="most requests per phase")
    ap.add_argument("--max-batch", type=int, default=16, help="the batched server's --max-batch (default 16)")
    ap.add_argument("--threads", type=int, default=None,
                    help="both servers' --threads (default: torch's; 1 on a machine other jobs keep busy)")
    ap.add_argument("--omp-active", action="store_true",
                    help="leave OpenMP's default busy-waiting on: by default both servers run with "
                    "OMP_WAIT_POLICY=PASSIVE (unless set), as `graft serve` should on a machine other work keeps "
                    "busy: there a batch-1 forward pass with 2 spinning threads measured 3.2 s instead of 0.18 s")
    ap.add_argument("--window-ms", type=float, default=5.0, help="the batched server's --batch-window-ms")
    ap.add_argument("--engine", default="auto", choices=("auto", "onnx", "torch"),
                    help="both servers' --engine (auto: the run's fresh ONNX export if it has one, else torch)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="graft-serve-load-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "GRAFT_CACHE_DIR": str(tmp / "cache"), "PYTHONUNBUFFERED": "1"}
        if not args.omp_active:  # see --omp-active
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        os.environ["GRAFT_CACHE_DIR"] = env["GRAFT_CACHE_DIR"]
        photos, source = load_photos(tmp)
        run = Path(args.run) if args.run else train_run(tmp)
        servers = [Server(run, "batched", args.max_batch, args.window_ms, args.threads, env, args.engine),
                   Server(run, "one-at-a-time", 1, 0.0, args.threads, env, args.engine)]
        try:
            for s in servers:
                s.wait_ready()
                asyncio.run(load_phase(s.url, photos, 4, 3.0, 64, 0))  # warm-up: first passes, allocator
            before = {s.name: s.health() for s in servers}
            totals = {s.name: {"latencies": [], "errors": [], "wall": 0.0} for s in servers}
            per_round = args.duration / args.rounds
            for r in range(args.rounds):
                order = servers if r % 2 == 0 else servers[::-1]
                for s in order:
                    got = asyncio.run(load_phase(s.url, photos, args.clients, per_round, args.max_requests,
                                                 offset=r * 7919))
                    t = totals[s.name]
                    t["latencies"] += got["latencies"]
                    t["errors"] += got["errors"]
                    t["wall"] += got["wall"]
                    print(f"  round {r + 1}/{args.rounds} {s.name:>14}: {len(got['latencies']) / got['wall']:6.1f} "
                          f"photos/s, {len(got['errors'])} errors", file=sys.stderr)
            figures = {}
            for s in servers:
                t, h, b = totals[s.name], s.health(), before[s.name]
                batches, answered = h["batches"] - b["batches"], h["photos"] - b["photos"]
                figures[s.name] = {
                    "photos_per_s": round(len(t["latencies"]) / t["wall"], 2),
                    "p50_ms": round(1000 * pct(t["latencies"], 50), 1),
                    "p99_ms": round(1000 * pct(t["latencies"], 99), 1),
                    "requests": len(t["latencies"]) + len(t["errors"]),
                    "errors": len(t["errors"]),
                    "error_kinds": sorted({str(e) for e in t["errors"]}),
                    "peak_rss_mb": round(s.peak_rss_mb(), 1),
                    "mean_batch": round(answered / batches, 2) if batches else None,
                    "forward_ms_per_photo": round(1000 * (h["forward_s"] - b["forward_s"]) / answered, 1)
                    if answered else None,
                    "forward_busy": round((h["forward_s"] - b["forward_s"]) / t["wall"], 3),
                    "largest_batch": h["largest_batch"],
                }
        finally:
            for s in servers:
                s.stop()

    a, b = figures["batched"], figures["one-at-a-time"]
    ratio = a["photos_per_s"] / b["photos_per_s"] if b["photos_per_s"] else float("nan")
    print(f"\n{args.clients} clients, {args.duration:g} s per side in {args.rounds} alternating rounds, photos: {source}, "
          f"CPU cores: {len(os.sched_getaffinity(0))}, server threads: {args.threads or 'default'}, "
          f"load average before: {LOAD_BEFORE}, OMP_WAIT_POLICY: {env.get('OMP_WAIT_POLICY', 'default')}")
    print(f"{'server':<16}{'photos/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'requests':>10}{'errors':>8}"
          f"{'peak RSS MB':>13}{'mean batch':>12}{'fwd ms/photo':>14}{'fwd busy':>10}")
    for name, f in figures.items():
        print(f"{name:<16}{f['photos_per_s']:>10.2f}{f['p50_ms']:>9.1f}{f['p99_ms']:>9.1f}{f['requests']:>10}"
              f"{f['errors']:>8}{f['peak_rss_mb']:>13.1f}{str(f['mean_batch']):>12}"
              f"{str(f['forward_ms_per_photo']):>14}{f['forward_busy']:>10.2f}")
    print(f"batched / one-at-a-time throughput: {ratio:.2f}x (target >= 1.5x, 0 errors)")
    emit({"bench": "serve_load", "clients": args.clients, "duration_s_per_side": args.duration,
          "rounds": args.rounds, "photos": source, "threads": args.threads, "load_average_before": LOAD_BEFORE,
          "omp_wait_policy": env.get("OMP_WAIT_POLICY", "default"), "cpu_cores": len(os.sched_getaffinity(0)),
          "batched": figures["batched"], "one_at_a_time": figures["one-at-a-time"],
          "throughput_ratio": round(ratio, 3),
          "errors": a["errors"] + b["errors"],
          "target_met": bool(ratio >= 1.5 and a["errors"] + b["errors"] == 0)})


# --- --bounded: the hostile load test (issue 22) -------------------------------------------------------

BIG_SIDE = (8000, 7999)  # the issue's photo: 64 megapixels in a ~190 KB PNG
PILLOW_MAX_PIXELS = 89_478_485  # the largest photo decoded at all (Pillow's bomb limit)


def big_png(width: int, height: int) -> bytes:
    """A valid PNG of black rows: 64 MP in ~190 KB, so 64 of them (12 MB) pass --max-upload and
    only their pixels can refuse them (built row by row)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + width * 3)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "graftbenchboundary"
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
             f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) / 1024


async def ordinary_client(client, photos, deadline, offset, out):
    i = offset
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        try:
            r = await client.post("/predict", content=photos[i % len(photos)])
            out["statuses"].append(r.status_code)
            if r.status_code == 200:
                out["latencies"].append(time.perf_counter() - t0)
        except httpx.HTTPError as e:
            out["statuses"].append(type(e).__name__)
        i += 1


async def big_client(client, big, many, deadline, out):
    """One 64 MP PNG (decoded, if the second's pixels allow), then 64 of them in one multipart."""
    body, ctype = many
    while time.perf_counter() < deadline:
        for content, headers in ((big, {"content-type": "image/png"}), (body, {"content-type": ctype})):
            try:
                r = await client.post("/predict", content=content, headers=headers)
                out["big"].append(r.status_code)
                if r.status_code == 503:
                    await asyncio.sleep(min(2.0, float(r.headers.get("retry-after", 1))))
            except httpx.HTTPError as e:
                out["big"].append(type(e).__name__)


async def half_sent_client(port: int, held: int, deadline, out):
    """Keep `held` connections with half-sent headers open; count those the server cuts off."""
    async def one():
        while time.perf_counter() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                out["half_sent_refused"] += 1
                await asyncio.sleep(0.2)
                continue
            out["half_sent_opened"] += 1
            writer.write(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nX-Wait: ")
            try:
                got = await asyncio.wait_for(reader.read(), max(0.01, deadline - time.perf_counter()))
                out["half_sent_cut_off"] += 1
                out["half_sent_408"] += got.startswith(b"HTTP/1.1 408")
            except (asyncio.TimeoutError, OSError):
                pass
            writer.close()

    await asyncio.gather(*(one() for _ in range(held)))


async def sample_rss(pid: int, deadline, out):
    while time.perf_counter() < deadline:
        out["rss_samples"].append(rss_mb(pid))
        await asyncio.sleep(0.25)


async def hostile_load(server, port, photos, big, many, seconds: float) -> dict:
    out = {"latencies": [], "statuses": [], "big": [], "rss_samples": [], "half_sent_opened": 0,
           "half_sent_cut_off": 0, "half_sent_408": 0, "half_sent_refused": 0}
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(ordinary_client(client, photos, deadline, 97 * i, out) for i in range(12)),
                             *(big_client(client, big, many, deadline, out) for _ in range(2)),
                             *(half_sent_client(port, 100, deadline, out) for _ in range(2)),
                             sample_rss(server.proc.pid, deadline, out))
    return out


def counts(values) -> dict:
    from collections import Counter

    return {str(k): v for k, v in sorted(Counter(map(str, values)).items())}


def bounded_main():
    ap = argparse.ArgumentParser(description="graft serve under hostile load (bench/serve_load.py --bounded)")
    ap.add_argument("--run", help="run folder to serve (default: a head run trained here on hymenoptera)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    ap.add_argument("--threads", type=int, default=None, help="the server's --threads")
    args = ap.parse_args()
    hym = need_hymenoptera()  # a JSON line with "skipped" and exit 0 without it
    decoders, max_upload = 2, 20 << 20  # graft serve's defaults, which this measures
    with tempfile.TemporaryDirectory(prefix="graft-serve-bounded-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "GRAFT_CACHE_DIR": os.environ.get("GRAFT_CACHE_DIR", str(tmp / "cache")),
               "PYTHONUNBUFFERED": "1"}
        os.environ["GRAFT_CACHE_DIR"] = env["GRAFT_CACHE_DIR"]
        run = Path(args.run) if args.run else None
        if run is None:
            import graft

            print("training a head run on hymenoptera ...", file=sys.stderr)
            run = graft.train(hym, tmp / "run", strategy="head", aug_views=0, report=False, progress=False).run_dir
        photos = [p.read_bytes() for p in sorted((hym / "val").rglob("*.jpg"))]
        big = big_png(*BIG_SIDE)
        many = multipart([(f"big{i}.png", big) for i in range(64)])
        server = Server(run, "bounded", 16, 5.0, args.threads, env)
        said = []  # the server's log, read so a full pipe never blocks it
        threading.Thread(target=lambda: said.extend(server.proc.stderr), daemon=True).start()
        port = int(server.url.rsplit(":", 1)[1])
        try:
            server.wait_ready()
            asyncio.run(load_phase(server.url, photos, 16, 5.0, 400, 0))  # warm-up: batches of 16, allocator
            warm_mb = rss_mb(server.proc.pid)
            got = asyncio.run(hostile_load(server, port, photos, big, many, args.duration))
            time.sleep(3)  # idle: what the server keeps
            alive = server.proc.poll() is None
            health = httpx.get(server.url + "/health", timeout=30).status_code if alive else None
            rest_mb, peak_mb = (rss_mb(server.proc.pid), rss_mb(server.proc.pid, "VmHWM")) if alive else (None, None)
        finally:
            server.stop()
    # what the settings let the server hold beyond its warm self: each decoder a whole decoded photo
    # of the most pixels Pillow decodes (RGB, and one converted copy), and 16 bodies at --max-upload
    bound_mb = warm_mb + (decoders * PILLOW_MAX_PIXELS * 3 * 2 + 16 * max_upload) / 2**20
    lat = got["latencies"]
    figures = {
        "bench": "serve_load --bounded", "duration_s": args.duration, "clients": 16,
        "mix": "12 ordinary (hymenoptera val), 2 big (one 8000x7999 PNG, then 64 of them), 2 x 100 half-sent",
        "stayed_up": bool(alive and health == 200),
        "ordinary": {"answered": len(lat), "p50_ms": round(1000 * pct(lat, 50), 1),
                     "p99_ms": round(1000 * pct(lat, 99), 1), "statuses": counts(got["statuses"])},
        "big_statuses": counts(got["big"]),
        "half_sent": {"opened": got["half_sent_opened"], "cut_off_by_server": got["half_sent_cut_off"],
                      "answered_408": got["half_sent_408"], "connect_refused": got["half_sent_refused"]},
        "rss_mb": {"warm": round(warm_mb, 1), "peak_during_load": round(max(got["rss_samples"], default=0), 1),
                   "peak_hwm": peak_mb and round(peak_mb, 1), "at_rest_after": rest_mb and round(rest_mb, 1)},
        "rss_bound_mb": round(bound_mb, 1),
        "within_bound": bool(peak_mb is not None and peak_mb <= bound_mb),
        "cpu_cores": len(os.sched_getaffinity(0)), "load_average_before": LOAD_BEFORE,
    }
    print(f"stayed up: {figures['stayed_up']}; ordinary photos p50 {figures['ordinary']['p50_ms']} ms, "
          f"p99 {figures['ordinary']['p99_ms']} ms ({len(lat)} answered); big: {figures['big_statuses']}; "
          f"half-sent cut off: {got['half_sent_cut_off']}/{got['half_sent_opened']}; peak RSS {peak_mb} MB "
          f"(bound {bound_mb:.0f} MB), at rest {rest_mb} MB", file=sys.stderr)
    emit(figures)


if __name__ == "__main__":
    main()
