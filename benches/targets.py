#!/usr/bin/env python3
"""Targets P5, P6 and P7 of docs/performance.md, measured on loopback in one run.

It builds nothing: run `cargo build --release -p pbkv-tools` first (it uses
target/release/pbkv). Every process runs on 127.0.0.1 ports from the OS, without keys, and
is killed at the end (also on Ctrl-C). Each figure is the median over `--rounds` rounds,
with the spread (min to max) as the noise.

P5  failover under load: a view service and three replicas; `pbkv bench` (8 clients,
    get=50,put=50 on 1000 keys, --history) runs for 6 s and the primary is SIGKILLed 2 s
    in. `pbkv history check` checks the history for linearizability (so no acknowledged
    write is lost: later gets see it) and gives the longest stretch without an ok
    completion, which must contain the kill: the client-visible unavailability. Target:
    <= 1.2 x the dead time (ping_interval_ms x dead_pings = 500 ms).
P6  state transfer: a primary alone holds 1 M keys of 100 B (`bench --fill`); while a
    bench keeps writing (open loop, --rate 2000), a new replica starts with its event log
    on, and the time from its first Ping to the "installed snapshot" event is measured on
    its own clock. The primary's longest loop turn while the writers run and the transfer
    goes on (`pbkv info` polled every ~100 ms from 2.5 s after the fill until 1 s after
    the install, loop.turn_longest_recent_ms: the last one to two seconds), its longest
    since start (the fill included), and the writers' p99 and max, are reported.
    Target: <= 0.5 s, no turn over 10 ms.
P7  event logs: replicated put and linearizable get throughput (50 clients, 10 s, 100,000
    keys, 16 B) with every node's event log on and off, alternating within each round.
    Target: on >= 0.9 x off.

Usage: benches/targets.py [--rounds 3] [--only p5,p6,p7] [--json FILE]
                          [--pbkv target/release/pbkv] [--keys-p6 1000000]
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import Processes, free_port, machine, pbkv_info, wait_until  # noqa: E402

DEAD_TIME_MS = 500.0


class Cluster:
    """A view service and replicas started one by one, in a directory of their own."""

    def __init__(self, procs, pbkv, events=False):
        self.procs = procs
        self.pbkv = pbkv
        self.events = events
        self.env = dict(os.environ, PBKV_LOG="warn")
        self.env.pop("PBKV_KEY_FILE", None)
        self.vs = f"127.0.0.1:{free_port()}"
        self.servers = {}
        self.start("vs", f'listen = "{self.vs}"\nroles = ["viewservice"]\n')

    def start(self, name, body, events=None):
        config = f'node_id = "{name}"\n{body}'
        if self.events if events is None else events:
            config += f'[log]\nevents = "{name}.events.jsonl"\nrun = "targets"\n'
        path = os.path.join(self.procs.dir, name + ".toml")
        with open(path, "w") as f:
            f.write(config)
        return self.procs.start("pbkv-" + name, [self.pbkv, "node", "--config", path],
                                env=self.env)

    def server(self, name, events=None):
        addr = f"127.0.0.1:{free_port()}"
        proc = self.start(name, f'listen = "{addr}"\nroles = ["replica"]\n'
                                f'viewservice = "{self.vs}"\n', events)
        self.servers[addr] = (name, proc)
        return addr

    def view(self):
        info = pbkv_info(self.pbkv, self.vs)
        service = info and info.get("viewservice", {})
        return service or {}

    def wait_view(self, backup=True):
        def ready():
            view = self.view()
            return bool(view.get("acked") and view.get("view", {}).get("primary")
                        and (view["view"].get("backup") or not backup))
        wait_until(20, "a view with a primary" + (" and a backup" if backup else ""), ready)
        return self.view()["view"]

    def bench(self, *args, timeout=600):
        argv = [self.pbkv, "bench", "--json", "--vs", self.vs, *args]
        out = subprocess.run(argv, capture_output=True, env=self.env, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {out.returncode}: "
                               f"{out.stderr.decode(errors='replace').strip()}")
        return json.loads(out.stdout)

    def bench_in_background(self, *args):
        argv = [self.pbkv, "bench", "--json", "--vs", self.vs, *args]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=self.env)


def finished(proc, timeout=120):
    stdout, stderr = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bench exited {proc.returncode}: {stderr.decode().strip()}")
    return json.loads(stdout)


def member_addr(member):
    return member["addr"] if isinstance(member, dict) else member


def p5_round(pbkv, dir):
    procs = Processes(dir)
    try:
        c = Cluster(procs, pbkv)
        for name in ("s1", "s2", "s3"):
            c.server(name)
            time.sleep(0.2)
        view = c.wait_view()
        primary = member_addr(view["primary"])
        history = os.path.join(dir, "history.jsonl")
        bench = c.bench_in_background("--clients", "8", "--duration", "6", "--keys", "1000",
                                      "--mix", "get=50,put=50", "--history", history,
                                      "--timeout", "10")
        time.sleep(2.0)
        killed_ns = time.monotonic_ns()
        c.servers[primary][1].send_signal(signal.SIGKILL)
        report = finished(bench)
        check = subprocess.run([pbkv, "history", "check", "--json", history],
                               capture_output=True)
        checked = json.loads(check.stdout)
        if check.returncode != 0 or not checked["linearizable"]:
            raise RuntimeError(f"the history is not linearizable: {checked}")
        gap_from, gap_to = checked["longest_gap_from_ns"], checked["longest_gap_to_ns"]
        # Replies already on their way when the signal lands still arrive: the stretch
        # may begin just after the kill.
        if not gap_from - 50_000_000 <= killed_ns <= gap_to:
            raise RuntimeError("the longest stretch without an ok completion does not "
                               f"contain the kill: {checked}, kill at {killed_ns}")
        return {"unavailable_ms": checked["longest_gap_ms"],
                "kill_to_first_ok_ms": (gap_to - killed_ns) / 1e6,
                "ops": checked["operations"], "info": checked["info"],
                "ops_per_sec": report["ops_per_sec"], "linearizable": True}
    finally:
        procs.stop_all()


def transfer_times(path):
    """(first Ping sent, snapshot installed) on the node's own clock, in ns."""
    first_ping = installed = None
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break  # Still being written: read again at the next poll.
            event = json.loads(line)
            if first_ping is None and event.get("kind") == "send" \
                    and event.get("type") == "PingRequest":
                first_ping = event["wall_ns"]
            if event.get("kind") == "local" and \
                    str(event.get("text", "")).startswith("installed snapshot"):
                installed = event["wall_ns"]
                break
    return first_ping, installed


def p6_round(pbkv, dir, keys):
    procs = Processes(dir)
    try:
        c = Cluster(procs, pbkv)
        c.server("s1", events=False)
        view = c.wait_view(backup=False)
        primary = member_addr(view["primary"])
        c.bench("--fill", "--clients", "50", "--keys", str(keys), "--requests", str(keys),
                "--value-size", "100", "--mix", "put=100")
        before = pbkv_info(pbkv, primary)["loop"]["turn_longest_ms"]
        writers = c.bench_in_background("--clients", "8", "--duration", "8", "--rate", "2000",
                                        "--keys", str(keys), "--value-size", "100",
                                        "--mix", "put=100")
        # Long enough for the primary's recent-turn figure (the last one to two seconds)
        # to have forgotten the fill.
        time.sleep(2.5)
        recent = []

        def poll_recent():
            info = pbkv_info(pbkv, primary) or {}
            value = info.get("loop", {}).get("turn_longest_recent_ms")
            if value is not None:
                recent.append(value)
        poll_recent()
        c.server("s2", events=True)
        events = os.path.join(dir, "s2.events.jsonl")

        def installed():
            poll_recent()
            return os.path.exists(events) and transfer_times(events)[1] is not None
        wait_until(60, "the new backup to install the snapshot", installed)
        # The figure is published at most 100 ms late and covers at least the last second.
        for _ in range(5):
            time.sleep(0.2)
            poll_recent()
        first_ping, done = transfer_times(events)
        report = finished(writers)
        after = pbkv_info(pbkv, primary)["loop"]["turn_longest_ms"]
        put = report["latency_us"]["put"]
        return {"transfer_s": (done - first_ping) / 1e9, "keys": keys,
                "turn_longest_ms_during": max(recent), "turn_longest_ms_at_start": recent[0],
                "turn_longest_ms_before": before, "turn_longest_ms_after": after,
                "writers_p99_ms": put["p99"] / 1e3, "writers_max_ms": put["max"] / 1e3,
                "writers_ops_per_sec": report["ops_per_sec"]}
    finally:
        procs.stop_all()


def p7_round(pbkv, dir, events):
    procs = Processes(dir)
    try:
        c = Cluster(procs, pbkv, events=events)
        for name in ("s1", "s2"):
            c.server(name)
            time.sleep(0.2)
        c.wait_view()
        c.bench("--fill", "--clients", "50", "--keys", "100000", "--requests", "100000",
                "--value-size", "16", "--mix", "put=100")
        out = {}
        for kind in ("put", "get"):
            report = c.bench("--clients", "50", "--duration", "10", "--keys", "100000",
                             "--value-size", "16", "--mix", f"{kind}=100")
            out[kind] = report["ops_per_sec"]
        return out
    finally:
        procs.stop_all()


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="p5,p6,p7")
    parser.add_argument("--pbkv", default="target/release/pbkv")
    parser.add_argument("--keys-p6", type=int, default=1_000_000)
    parser.add_argument("--json")
    args = parser.parse_args()
    only = set(args.only.split(","))
    pbkv = os.path.abspath(args.pbkv)
    results = {"machine": machine(), "rounds": args.rounds}
    p5, p6, p7 = [], [], {"on": [], "off": []}
    for round_number in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="pbkv-targets-") as dir:
            if "p5" in only:
                p5.append(p5_round(pbkv, mk(dir, "p5")))
                print(f"round {round_number + 1} P5 {p5[-1]}", flush=True)
            if "p6" in only:
                p6.append(p6_round(pbkv, mk(dir, "p6"), args.keys_p6))
                print(f"round {round_number + 1} P6 {p6[-1]}", flush=True)
            if "p7" in only:
                # Alternating: odd rounds start with the logs on.
                order = ("on", "off") if round_number % 2 == 0 else ("off", "on")
                for mode in order:
                    p7[mode].append(p7_round(pbkv, mk(dir, "p7" + mode), mode == "on"))
                    print(f"round {round_number + 1} P7 {mode} {p7[mode][-1]}", flush=True)
    if p5:
        unavailable = summary([r["unavailable_ms"] for r in p5])
        results["p5"] = {"rounds": p5, "unavailable_ms": unavailable,
                         "ratio_to_dead_time": unavailable["median"] / DEAD_TIME_MS}
        print(f"P5 unavailability after SIGKILL of the primary: median "
              f"{unavailable['median']:.0f} ms ({unavailable['min']:.0f}-"
              f"{unavailable['max']:.0f}) = {unavailable['median'] / DEAD_TIME_MS:.2f} x the "
              f"dead time (target <= 1.2); every history linearizable")
    if p6:
        transfer = summary([r["transfer_s"] for r in p6])
        turn = summary([r["turn_longest_ms_during"] for r in p6])
        results["p6"] = {"rounds": p6, "transfer_s": transfer, "turn_longest_ms": turn}
        print(f"P6 state transfer of {args.keys_p6} x 100 B: median {transfer['median']:.3f} s "
              f"({transfer['min']:.3f}-{transfer['max']:.3f}; target <= 0.5); the primary's "
              f"longest turn during it {turn['median']:.1f} ms ({turn['min']:.1f}-{turn['max']:.1f}; "
              f"target <= 10)")
    if p7["on"]:
        for kind in ("put", "get"):
            on = [r[kind] for r in p7["on"]]
            off = [r[kind] for r in p7["off"]]
            ratios = [a / b for a, b in zip(on, off)]
            results.setdefault("p7", {})[kind] = {"on": summary(on), "off": summary(off),
                                                  "ratio": summary(ratios)}
            print(f"P7 {kind} with event logs on / off: {statistics.median(on):.0f} / "
                  f"{statistics.median(off):.0f} ops/s, ratio median "
                  f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}; "
                  f"target >= 0.9)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def mk(dir, name):
    path = os.path.join(dir, name)
    os.makedirs(path, exist_ok=True)
    return path


if __name__ == "__main__":
    main()
