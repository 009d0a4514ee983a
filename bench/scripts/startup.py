#!/usr/bin/env python3
"""Start-to-/health time and idle RSS of a gateway binary.

Usage: python3 bench/scripts/startup.py [BINARY] [RUNS]
Spawns `BINARY gateway run --port P --token T`, polls GET /healthz on a fresh TCP
connection every 0.5 ms until it answers 200, records the elapsed time from spawn, reads
VmRSS after 1 s idle, then SIGTERMs it. Prints one JSON line.
"""
import json, os, signal, socket, statistics, subprocess, sys, tempfile, time

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/clawgate"
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def healthy(port):
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=0.2)
        c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = c.recv(64); c.close()
        return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False

times, rss = [], []
for _ in range(runs):
    port = free_port()
    home = tempfile.mkdtemp()
    env = dict(os.environ, HOME=home)
    t0 = time.perf_counter()
    p = subprocess.Popen([binary, "gateway", "run", "--port", str(port), "--token", "bench-token"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not healthy(port):
        if time.perf_counter() - t0 > 10: raise SystemExit("gateway did not start")
        time.sleep(0.0005)
    times.append((time.perf_counter() - t0) * 1000)
    time.sleep(1)
    with open(f"/proc/{p.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"): rss.append(int(line.split()[1]))
    p.send_signal(signal.SIGTERM); p.wait(5)
times.sort()
print(json.dumps({"binary": binary, "runs": runs,
                  "start_to_health_ms": {"min": round(times[0], 2), "median": round(statistics.median(times), 2), "max": round(times[-1], 2)},
                  "idle_rss_kb": {"min": min(rss), "median": statistics.median(rss), "max": max(rss)}}))
