#!/usr/bin/env python3
"""PostgreSQL's CPU over a window, by process: which backend (by application_name, which
Herald sets per role: herald-ingest, herald-recorder, herald-claim, herald for the pool)
and which background process spent it.

usage: scripts/pg-cpu-by-process.py SECONDS [PSQL_URL]
  Run it while a load runs (for example during the harness's latency phase); it samples
  /proc for every process whose command line starts with "postgres" at the start and the
  end of the window. PSQL_URL (default postgres://postgres@127.0.0.1/postgres) is where
  pg_stat_activity is read to name the backends.
"""

import os
import subprocess
import sys
import time


def snapshot():
    """pid -> (command line, user + system ticks) of every postgres process."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            if not cmd.startswith("postgres"):
                continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            found[int(pid)] = (cmd, int(fields[11]) + int(fields[12]))
        except OSError:
            pass
    return found


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    seconds = float(sys.argv[1])
    url = sys.argv[2] if len(sys.argv) > 2 else "postgres://postgres@127.0.0.1/postgres"
    ticks = os.sysconf("SC_CLK_TCK")
    before = snapshot()
    time.sleep(seconds)
    after = snapshot()
    listing = subprocess.run(
        ["psql", url, "-Atc",
         "SELECT pid, coalesce(nullif(application_name, ''), backend_type) FROM pg_stat_activity"],
        capture_output=True, text=True, check=False,
    ).stdout
    names = dict(line.split("|", 1) for line in listing.splitlines() if "|" in line)
    rows = []
    total = 0
    for pid, (cmd, spent) in after.items():
        used = spent - before.get(pid, (cmd, 0))[1]
        total += used
        if used > 0:
            rows.append((used, pid, names.get(str(pid), ""), cmd[:60]))
    for used, pid, name, cmd in sorted(rows, reverse=True):
        print(f"{used / ticks / seconds:6.3f} core  {pid:>7} {name:<18} {cmd}")
    print(f"{total / ticks / seconds:6.3f} core  in all over {seconds:g} s")


if __name__ == "__main__":
    main()
