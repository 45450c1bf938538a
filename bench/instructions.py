#!/usr/bin/env python3
"""Instructions per request, counted by valgrind (callgrind), for each server.

Request rates on a shared machine move by tens of percent from one second to
the next; instruction counts do not. This counts the instructions each server
executes per request (the difference between a run of N1 and one of N2
requests, so that start-up and shut-down cancel out), for:

- hyper-util, plain (`serve-baseline` of the bench binary),
- hyper-util with hyper's 30 s header-read timeout (`serve-baseline-timeout`),
- endless (`serve-endless`),
- optionally, the endless of an earlier build (`--before PATH`).

Under valgrind the threads of a server run one at a time, so contention (the
timer wheel's locks, cache lines moving between cores) is not in the count:
it is the work done, not the time it takes.

Needs valgrind, ab (apache2-utils) and h2load (nghttp2-client):

    cargo build --release -p endless-bench --example bench
    python3 bench/instructions.py [--before OLD_BENCH_BINARY] [--json docs/bench-instructions.json]
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N1, N2 = 2000, 10000
CONNS = 8


def run(binary, role, mode, n, outdir):
    out = os.path.join(outdir, "cg.%p")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         binary, role, "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = None
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.match(r"READY pid=\d+ reloaded=\w+ addrs=(\S+)", line)
        if m:
            addr = m.group(1).split(",")[0]
            break
    if addr is None:
        proc.kill()
        proc.wait()
        sys.exit(f"{role}: no READY line")
    url = f"http://{addr}/"
    if mode == "keep-alive":
        cmd = ["ab", "-q", "-k", "-n", str(n), "-c", str(CONNS), url]
    elif mode == "close":
        cmd = ["ab", "-q", "-n", str(n), "-c", str(CONNS), url]
    else:
        cmd = ["h2load", "-n", str(n), "-c", str(CONNS), "-m", "1", url]
    load = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    done = (re.search(r"Complete requests:\s+(\d+)", load.stdout)
            or re.search(r"(\d+) succeeded", load.stdout))
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    files = [os.path.join(outdir, f) for f in os.listdir(outdir) if f.startswith("cg.")]
    total = 0
    for f in files:
        with open(f) as fh:
            for line in fh:
                if line.startswith("summary:") or line.startswith("totals:"):
                    total = max(total, int(line.split()[1]))
        os.remove(f)
    return total, int(done.group(1)) if done else 0, load.stdout[-400:] if not done else ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=os.path.join(ROOT, "target/release/examples/bench"))
    ap.add_argument("--before")
    ap.add_argument("--modes", default="keep-alive,close,h2c")
    ap.add_argument("--json", default=os.path.join(ROOT, "docs/bench-instructions.json"))
    ap.add_argument("--requests", default=f"{N1},{N2}", help="N1,N2")
    a = ap.parse_args()
    n1, n2 = (int(x) for x in a.requests.split(","))
    servers = [("hyper-util", a.bench, "serve-baseline"),
               ("hyper-util + header timeout", a.bench, "serve-baseline-timeout"),
               ("endless", a.bench, "serve-endless")]
    if a.before:
        servers.append(("endless before", a.before, "serve-endless"))
    rows = []
    with tempfile.TemporaryDirectory() as outdir:
        for mode in a.modes.split(","):
            per = {}
            for name, binary, role in servers:
                i1, d1, e1 = run(binary, role, mode, n1, outdir)
                i2, d2, e2 = run(binary, role, mode, n2, outdir)
                if os.environ.get("DEBUG"):
                    print(name, mode, i1, d1, i2, d2, file=sys.stderr)
                if d2 <= d1:
                    sys.exit(f"{name} {mode}: {d1}, {d2} requests done: {e1} {e2}")
                per[name] = (i2 - i1) / (d2 - d1)
                print(f"{mode:10} {name:28} {per[name]:10.0f} instructions per request", flush=True)
            base = per["hyper-util"]
            rows.append({"mode": mode, "instructions_per_request": per,
                         "ratio_to_hyper_util": {k: v / base for k, v in per.items()}})
    print()
    print("| mode | " + " | ".join(n for n, _, _ in servers) + " |")
    print("|---|" + "---|" * len(servers))
    for r in rows:
        cells = [f"{r['instructions_per_request'][n]:,.0f} ({r['ratio_to_hyper_util'][n]:.3f})"
                 for n, _, _ in servers]
        print(f"| {r['mode']} | " + " | ".join(cells) + " |")
    with open(a.json, "w") as fh:
        json.dump({"requests": [n1, n2], "connections": CONNS, "rows": rows}, fh, indent=2)
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
