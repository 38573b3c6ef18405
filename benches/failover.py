#!/usr/bin/env python3
"""Failover figures, embedded view service against the view service in etcd, alternating
rounds in one run on loopback (the method docs/performance-style figures use: medians).

Per round and mode: a cluster of three replicas comes up; once its view names a primary and
a backup and is acknowledged, the primary is SIGKILLed and the time until a put is
acknowledged again is measured (client-visible, through `pbkv put` in a loop). In the etcd
mode the view-service leader is then SIGKILLed and the time until the standby leads is
measured, and the view-change transaction latencies the nodes recorded are collected.

Usage: benches/failover.py [--rounds N] [--pbkv target/release/pbkv] [--etcd /usr/bin/etcd]
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    def __init__(self, pbkv, dir):
        self.pbkv = pbkv
        self.dir = dir
        self.procs = {}

    def start(self, name, config):
        path = os.path.join(self.dir, name + ".toml")
        with open(path, "w") as f:
            f.write(config)
        log = open(os.path.join(self.dir, name + ".log"), "w")
        env = dict(os.environ, PBKV_LOG="warn")
        self.procs[name] = subprocess.Popen(
            [self.pbkv, "node", "--config", path], stdout=subprocess.DEVNULL, stderr=log, env=env
        )

    def kill(self, name):
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def stop_all(self):
        for name in list(self.procs):
            self.kill(name)

    def cli(self, *args, timeout=5):
        return subprocess.run(
            [self.pbkv, *args], capture_output=True, timeout=timeout + 5, cwd=self.dir
        )

    def info(self, addr):
        out = self.cli("info", "--timeout", "1", "--node", addr, "--json", timeout=1)
        try:
            return json.loads(out.stdout)
        except ValueError:
            return None


def wait(limit, done):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if done():
            return time.monotonic() - start
        time.sleep(0.01)
    return None


def full_and_acked(run, vs_addrs):
    for addr in vs_addrs:
        info = run.info(addr)
        if not info:
            continue
        vs = info["viewservice"]
        if vs["acked"] and vs["view"]["backup"] and vs["view"]["primary"]:
            return vs["view"]
    return None


def start_etcd(etcd, dir):
    ports = [(free_port(), free_port()) for _ in range(3)]
    cluster = ",".join(f"e{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
    procs = []
    for i, (client, peer) in enumerate(ports):
        c, p = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        procs.append(subprocess.Popen(
            [etcd, "--name", f"e{i}", "--data-dir", os.path.join(dir, f"e{i}.data"),
             "--listen-client-urls", c, "--advertise-client-urls", c,
             "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
             "--initial-cluster", cluster, "--heartbeat-interval", "50",
             "--election-timeout", "500"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(dir, f"etcd{i}.log"), "w")))
    return procs, [f"127.0.0.1:{c}" for c, _ in ports]


def round_once(pbkv, mode, endpoints, cluster, dir):
    run = Run(pbkv, dir)
    figures = {}
    try:
        vs_names, vs_addrs = [], []
        count = 2 if mode == "etcd" else 1
        for i in range(count):
            port = free_port()
            name = f"vs{i}"
            config = f'node_id = "{name}"\nlisten = "127.0.0.1:{port}"\nroles = ["viewservice"]\n'
            if mode == "etcd":
                eps = ", ".join(f'"{e}"' for e in endpoints)
                config += f'[viewservice]\netcd_endpoints = [{eps}]\ncluster = "{cluster}"\n'
            run.start(name, config)
            vs_names.append(name)
            vs_addrs.append(f"127.0.0.1:{port}")
        time.sleep(0.3)
        servers = {}
        for i in range(3):
            port = free_port()
            listed = ", ".join(f'"{a}"' for a in vs_addrs)
            run.start(f"s{i}", f'node_id = "s{i}"\nlisten = "127.0.0.1:{port}"\n'
                      f'roles = ["replica"]\nviewservice = [{listed}]\n')
            servers[f"127.0.0.1:{port}"] = f"s{i}"
        vs = ",".join(vs_addrs)
        view = None
        for _ in range(500):
            view = full_and_acked(run, vs_addrs)
            if view:
                break
            time.sleep(0.02)
        if not view:
            raise RuntimeError(f"{mode}: no acknowledged view with a backup")
        assert run.cli("put", "k", "before", "--vs", vs).returncode == 0
        run.kill(servers[view["primary"]])
        killed = time.monotonic()
        while run.cli("put", "k", "after", "--vs", vs, "--timeout", "2", timeout=2).returncode != 0:
            if time.monotonic() - killed > 20:
                raise RuntimeError(f"{mode}: no failover")
        figures["primary_failover_s"] = time.monotonic() - killed
        if mode == "etcd":
            # Wait for the view to be full again, then kill the leader.
            wait(10, lambda: full_and_acked(run, vs_addrs))
            infos = {a: run.info(a) for a in vs_addrs}
            lats = []
            for info in infos.values():
                if info:
                    lats += info["viewservice"]["store"]["view_change_txn_us"]
            figures["txn_us"] = lats
            leader = next(a for a, i in infos.items()
                          if i and i["viewservice"]["store"]["leader"])
            other = next(a for a in vs_addrs if a != leader)
            run.kill(vs_names[vs_addrs.index(leader)])
            took = wait(10, lambda: (run.info(other) or {}).get("viewservice", {})
                        .get("store", {}).get("leader"))
            figures["leader_failover_s"] = took
    finally:
        run.stop_all()
    return figures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pbkv", default="target/release/pbkv")
    parser.add_argument("--etcd", default=os.environ.get("PBKV_ETCD", "/usr/bin/etcd"))
    args = parser.parse_args()
    pbkv = os.path.abspath(args.pbkv)
    top = tempfile.mkdtemp(prefix="pbkv-failover-")
    procs, endpoints = start_etcd(args.etcd, top)
    try:
        time.sleep(2)
        results = {"embedded": [], "etcd": []}
        for r in range(args.rounds):
            cluster = f"bench{r}"
            made = subprocess.run([pbkv, "init", "--etcd", ",".join(endpoints),
                                   "--cluster", cluster], capture_output=True)
            if made.returncode != 0:
                sys.exit(f"pbkv init: {made.stderr.decode()}")
            for mode in ("embedded", "etcd"):
                dir = tempfile.mkdtemp(dir=top)
                figures = round_once(pbkv, mode, endpoints, cluster, dir)
                print(f"round {r} {mode}: " + ", ".join(
                    f"{k} {v:.3f}" for k, v in figures.items() if isinstance(v, float)),
                    flush=True)
                results[mode].append(figures)
        med = lambda xs: statistics.median(xs) if xs else float("nan")
        emb = [f["primary_failover_s"] for f in results["embedded"]]
        etc = [f["primary_failover_s"] for f in results["etcd"]]
        lead = [f["leader_failover_s"] for f in results["etcd"] if f.get("leader_failover_s")]
        txn = sorted(x for f in results["etcd"] for x in f["txn_us"])
        p = lambda q: txn[min(len(txn) - 1, int(q * len(txn)))] / 1000 if txn else float("nan")
        print(f"primary failover, embedded view service: median {med(emb):.3f} s {emb}")
        print(f"primary failover, view service in etcd:  median {med(etc):.3f} s {etc}")
        print(f"ratio etcd / embedded: {med(etc) / med(emb):.2f}")
        print(f"view-service leader failover: median {med(lead):.3f} s {lead}")
        print(f"view-change transaction: p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms "
              f"over {len(txn)} changes")
    finally:
        for proc in procs:
            proc.kill()
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
