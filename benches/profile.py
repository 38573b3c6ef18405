#!/usr/bin/env python3
"""Where a replicated Put's cost goes: instructions and system calls per Put at the primary,
at the backup and in the bench client, on loopback (docs/performance.md, "Profile").

This machine's guest has no hardware counters (`perf stat -e instructions` is "not
supported"), so instructions come from valgrind's callgrind, whose counts repeat from run
to run where timings do not; system calls come from the kernel's tracepoints through
`perf stat` (raw_syscalls:sys_enter, and the read/write family by name).

It builds nothing: run `cargo build --release -p pbkv-tools` first (target/release/pbkv).
Processes run on 127.0.0.1 ports from the OS, without keys, and are killed at the end.

- System calls: a view service and two replicas; `perf stat -p` attached to the primary and
  the backup, and `perf stat` around the bench (`--requests N --clients C --mix put=100`,
  16 B values); counts divided by the bench's completed operations.
- Instructions: the node measured (primary or backup) runs under callgrind with
  instrumentation off; `callgrind_control -i on` just before the bench, a dump right after,
  so the count covers only the bench's operations. The bench's own count is the difference
  between runs of 2N and N requests under callgrind (its start-up cancels out).

Usage: benches/profile.py [--requests 20000] [--clients 8] [--json FILE]
                          [--pbkv target/release/pbkv]
"""

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import Processes, free_port, machine, pbkv_info, wait_until  # noqa: E402

SYSCALLS = ["raw_syscalls:sys_enter"] + [
    f"syscalls:sys_enter_{name}" for name in
    ("read", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg", "epoll_wait")]


class Cluster:
    def __init__(self, procs, pbkv):
        self.procs = procs
        self.pbkv = pbkv
        self.env = dict(os.environ, PBKV_LOG="warn")
        self.env.pop("PBKV_KEY_FILE", None)
        self.vs = f"127.0.0.1:{free_port()}"
        self.node("vs", f'listen = "{self.vs}"\nroles = ["viewservice"]\n')

    def node(self, name, body, wrapper=()):
        path = os.path.join(self.procs.dir, name + ".toml")
        with open(path, "w") as f:
            f.write(f'node_id = "{name}"\n{body}')
        return self.procs.start(name, [*wrapper, self.pbkv, "node", "--config", path],
                                env=self.env)

    def server(self, name, wrapper=()):
        addr = f"127.0.0.1:{free_port()}"
        proc = self.node(name, f'listen = "{addr}"\nroles = ["replica"]\n'
                               f'viewservice = "{self.vs}"\n', wrapper)
        return addr, proc

    def view(self):
        info = pbkv_info(self.pbkv, self.vs) or {}
        service = info.get("viewservice", {})
        view = service.get("view", {})
        addr = lambda m: m["addr"] if isinstance(m, dict) else m  # noqa: E731
        primary = view.get("primary") and addr(view["primary"])
        backup = view.get("backup") and addr(view["backup"])
        return service.get("acked"), primary, backup

    def wait(self, primary, backup=None):
        wait_until(120, f"view {primary} / {backup}", lambda: self.view() ==
                   (True, primary, backup))

    def pair(self, primary_wrapper=(), backup_wrapper=()):
        """s1 as primary, then s2 as its backup: (primary process, backup process)."""
        primary, p_proc = self.server("s1", primary_wrapper)
        self.wait(primary)
        backup, b_proc = self.server("s2", backup_wrapper)
        self.wait(primary, backup)
        return p_proc, b_proc

    def bench_argv(self, requests, clients):
        return [self.pbkv, "bench", "--json", "--vs", self.vs, "--requests", str(requests),
                "--clients", str(clients), "--keys", "100000", "--value-size", "16",
                "--mix", "put=100", "--timeout", "60"]


def perf_counts(path):
    counts = {}
    with open(path) as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) > 2 and fields[0].replace(".", "").isdigit():
                counts[fields[2]] = float(fields[0])
    return counts


def per_op(counts, ops):
    short = {name.split(":")[-1].replace("sys_enter_", ""): value / ops
             for name, value in counts.items()}
    short["all"] = short.pop("sys_enter", 0.0)
    return short


def syscalls(pbkv, dir, requests, clients):
    procs = Processes(dir)
    try:
        c = Cluster(procs, pbkv)
        p_proc, b_proc = c.pair()
        events = ",".join(SYSCALLS)
        perfs = []
        for name, proc in (("primary", p_proc), ("backup", b_proc)):
            out = os.path.join(dir, f"perf-{name}.csv")
            perfs.append((name, out, subprocess.Popen(
                ["perf", "stat", "-x,", "-e", events, "-p", str(proc.pid), "-o", out])))
        time.sleep(0.5)
        bench_out = os.path.join(dir, "perf-bench.csv")
        run = subprocess.run(["perf", "stat", "-x,", "-e", events, "-o", bench_out, "--",
                              *c.bench_argv(requests, clients)], capture_output=True,
                             env=c.env, timeout=300)
        report = json.loads(run.stdout)
        for _, _, perf in perfs:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=10)
        ops = report["ops"]
        result = {name: per_op(perf_counts(out), ops) for name, out, _ in perfs}
        result["bench"] = per_op(perf_counts(bench_out), ops)
        result["ops"] = ops
        result["ops_per_sec"] = report["ops_per_sec"]
        return result
    finally:
        procs.stop_all()


def callgrind_total(path):
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError(f"{path}: no totals")


def node_instructions(pbkv, dir, which, requests, clients):
    procs = Processes(dir)
    try:
        c = Cluster(procs, pbkv)
        out = os.path.join(dir, f"callgrind.{which}.%p")
        grind = ("valgrind", "--tool=callgrind", "--instr-atstart=no",
                 f"--callgrind-out-file={out}")
        if which == "primary":
            proc, _ = c.pair(primary_wrapper=grind)
        else:
            _, proc = c.pair(backup_wrapper=grind)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                       capture_output=True)
        run = subprocess.run(c.bench_argv(requests, clients), capture_output=True, env=c.env,
                             timeout=600)
        report = json.loads(run.stdout)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                       capture_output=True)
        time.sleep(1.0)
        dumps = [p for p in glob.glob(os.path.join(dir, f"callgrind.{which}.{proc.pid}*"))
                 if not p.endswith(f".{proc.pid}")]
        total = sum(callgrind_total(p) for p in dumps)
        return {"instructions_per_op": total / report["ops"], "ops": report["ops"]}
    finally:
        procs.stop_all()


def bench_instructions(pbkv, dir, requests, clients):
    procs = Processes(dir)
    try:
        c = Cluster(procs, pbkv)
        c.pair()
        totals = {}
        for n in (requests, 2 * requests):
            out = os.path.join(dir, f"callgrind.bench.{n}")
            run = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                                  *c.bench_argv(n, clients)], capture_output=True,
                                 env=c.env, timeout=900)
            report = json.loads(run.stdout)
            totals[n] = (callgrind_total(out), report["ops"])
        (small, small_ops), (large, large_ops) = totals[requests], totals[2 * requests]
        return {"instructions_per_op": (large - small) / (large_ops - small_ops)}
    finally:
        procs.stop_all()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pbkv", default="target/release/pbkv")
    parser.add_argument("--json")
    args = parser.parse_args()
    pbkv = os.path.abspath(args.pbkv)
    results = {"machine": machine(), "requests": args.requests, "clients": args.clients}
    with tempfile.TemporaryDirectory(prefix="pbkv-profile-") as dir:
        def sub(name):
            path = os.path.join(dir, name)
            os.makedirs(path)
            return path
        results["syscalls_per_put"] = syscalls(pbkv, sub("sys"), args.requests * 5,
                                               args.clients)
        print("system calls per put:", json.dumps(results["syscalls_per_put"]), flush=True)
        for which in ("primary", "backup"):
            results[f"instructions_{which}"] = node_instructions(
                pbkv, sub(which), which, args.requests, args.clients)
            print(f"instructions per put at the {which}:",
                  round(results[f"instructions_{which}"]["instructions_per_op"]), flush=True)
        results["instructions_bench"] = bench_instructions(pbkv, sub("bench"), args.requests,
                                                           args.clients)
        print("instructions per put in the bench:",
              round(results["instructions_bench"]["instructions_per_op"]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
