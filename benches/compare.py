#!/usr/bin/env python3
"""pbkv against Redis, one tool, one run: `pbkv bench` drives both with the same event loop,
connection count, key space and value size, in alternating rounds on loopback; the medians
and their ratios are printed (docs/performance.md reports them).

It builds nothing: run `cargo build --release -p pbkv-tools` first (it uses
target/release/pbkv). It needs Debian's `redis-server` (`.ci/run` installs it).

What it starts, all on 127.0.0.1 ports from the OS, and kills at the end (also on Ctrl-C):
- Redis: a primary and a replica (`--replicaof`), without persistence (`--save ''
  --appendonly no`), each in its own temporary directory;
- pbkv: a view service, then two replicas (the primary and its backup), without keys
  (protected mode; keys cost only the handshake, not the frames).

Both key spaces are filled first (`--fill`, not measured). Then each round runs, in this
order, for `--duration` seconds each:
  pbkv put       (replicated: the backup applied it before the client hears OK)
  redis SET      (not replicated before the reply)
  redis SET+WAIT (`SET`, then `WAIT 1 0`: the replica acknowledged it)
  pbkv get       (linearizable, at the primary)
  redis GET      (at the primary)
and the figures are the medians over the rounds of ops/s, p50 and p99, with the spread
(min to max) across rounds as the noise.

Targets (docs/performance.md):
  P1  pbkv put ops/s >= 1.0 x redis SET
  P2  pbkv put ops/s >= 1.5 x redis SET+WAIT
  P3  pbkv get ops/s >= 1.0 x redis GET
  P4  pbkv put p99 <= redis SET+WAIT p99

Usage: benches/compare.py [--rounds 3] [--duration 10] [--clients 50] [--pipeline 1]
                          [--keys 100000] [--value-size 16] [--quick] [--json FILE]
                          [--pbkv target/release/pbkv] [--redis-server /usr/bin/redis-server]
--quick: one round of 1 s on 10000 keys, a smoke run (its figures mean little).
"""

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CASES = [
    # name, target, mix, --redis-wait
    ("pbkv put", "pbkv", "put=100", None),
    ("redis SET", "redis", "put=100", None),
    ("redis SET+WAIT", "redis", "put=100", 1),
    ("pbkv get", "pbkv", "get=100", None),
    ("redis GET", "redis", "get=100", None),
]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_cpu():
    """(busy, steal, idle) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return ((user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS,
            (idle + iowait) / CLOCK_TICKS)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resp(port, *args, timeout=2.0):
    """One Redis command over a fresh connection; the reply as text (None if no answer)."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(request.encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                data += chunk
                if b"\r\n" not in data:
                    continue
                head, rest = data.split(b"\r\n", 1)
                if head[:1] != b"$":
                    return head[1:].decode(errors="replace")
                size = int(head[1:])
                if size < 0:
                    return None
                if len(rest) >= size + 2:
                    return rest[:size].decode(errors="replace")
    except OSError:
        return None


def wait_until(limit, what, done):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


class Processes:
    """Everything started, killed in reverse order at the end."""

    def __init__(self, dir):
        self.dir = dir
        self.procs = []

    def start(self, name, argv, env=None):
        log = open(os.path.join(self.dir, name + ".log"), "w")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env=env, cwd=self.dir)
        self.procs.append((name, proc))
        return proc

    def cpu_seconds(self, prefix):
        """(user, system) CPU time so far of the processes whose name starts with prefix."""
        user = system = 0.0
        for name, proc in self.procs:
            if name.startswith(prefix):
                with open(f"/proc/{proc.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                user += int(fields[11]) / CLOCK_TICKS
                system += int(fields[12]) / CLOCK_TICKS
        return user, system

    def switches(self, prefix):
        """Context switches so far (voluntary: it slept; involuntary: it was preempted)
        of the processes whose name starts with prefix."""
        total = 0
        for name, proc in self.procs:
            if name.startswith(prefix):
                with open(f"/proc/{proc.pid}/status") as f:
                    total += sum(int(line.split()[1]) for line in f
                                 if line.startswith(("voluntary_ctxt_switches",
                                                     "nonvoluntary_ctxt_switches")))
        return total

    def stop_all(self):
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []


def start_redis(procs, redis_server):
    ports = {}
    for name, primary in (("redis-primary", None), ("redis-replica", "primary")):
        port = free_port()
        home = os.path.join(procs.dir, name)
        os.mkdir(home)
        argv = [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", home]
        if primary:
            argv += ["--replicaof", "127.0.0.1", str(ports[primary])]
        procs.start(name, argv)
        wait_until(10, f"{name} to answer PING", lambda: resp(port, "PING") == "PONG")
        ports["primary" if primary is None else "replica"] = port
    primary, replica = ports["primary"], ports["replica"]
    wait_until(20, "the Redis replica to come online", lambda: "master_link_status:up" in
               (resp(replica, "INFO", "replication") or "") and "state=online" in
               (resp(primary, "INFO", "replication") or ""))
    return primary, replica


def pbkv_info(pbkv, addr):
    out = subprocess.run([pbkv, "info", "--timeout", "1", "--node", addr, "--json"],
                         capture_output=True, timeout=10)
    try:
        return json.loads(out.stdout)
    except ValueError:
        return None


def start_pbkv(procs, pbkv):
    env = dict(os.environ, PBKV_LOG="warn")
    env.pop("PBKV_KEY_FILE", None)
    vs_port = free_port()
    vs = f"127.0.0.1:{vs_port}"
    configs = [("vs", f'node_id = "vs"\nlisten = "{vs}"\nroles = ["viewservice"]\n')]
    for name in ("s1", "s2"):
        configs.append((name, f'node_id = "{name}"\nlisten = "127.0.0.1:{free_port()}"\n'
                              f'roles = ["replica"]\nviewservice = "{vs}"\n'))
    for name, config in configs:
        path = os.path.join(procs.dir, name + ".toml")
        with open(path, "w") as f:
            f.write(config)
        procs.start("pbkv-" + name, [pbkv, "node", "--config", path], env=env)
        time.sleep(0.2)

    def full():
        info = pbkv_info(pbkv, vs)
        view = info and info.get("viewservice", {})
        return bool(view and view.get("acked") and view["view"].get("primary")
                    and view["view"].get("backup"))

    wait_until(20, "a pbkv view with a primary and a backup, acknowledged", full)
    return vs


class Bench:
    def __init__(self, args, procs, vs, redis_primary):
        self.args = args
        self.procs = procs
        self.vs = vs
        self.redis = f"127.0.0.1:{redis_primary}"

    def run(self, target, mix, wait, extra):
        a = self.args
        argv = [a.pbkv, "bench", "--json", "--clients", str(a.clients), "--pipeline",
                str(a.pipeline), "--keys", str(a.keys), "--value-size", str(a.value_size),
                "--mix", mix, *extra]
        if target == "redis":
            argv += ["--redis", self.redis]
            if wait:
                argv += ["--redis-wait", str(wait)]
        else:
            argv += ["--vs", self.vs]
        env = dict(os.environ)
        env.pop("PBKV_KEY_FILE", None)
        servers_before = self.procs.cpu_seconds(target)
        switches_before = self.procs.switches(target)
        busy_before, steal_before, idle_before = machine_cpu()
        started = time.monotonic()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        servers_after = self.procs.cpu_seconds(target)
        servers_system = servers_after[1] - servers_before[1]
        servers = servers_after[0] - servers_before[0] + servers_system
        server_switches = self.procs.switches(target) - switches_before
        wall = time.monotonic() - started
        busy_after, steal_after, idle_after = machine_cpu()
        bench_cpu = usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: "
                               f"{stderr.decode(errors='replace').strip()}")
        report = json.loads(stdout)
        if report["errors"] or report["unknown"]:
            raise RuntimeError(f"{' '.join(argv)}: errors {report['errors']}, "
                               f"unknown {report['unknown']}")
        # CPU per operation: the bench's own, and the servers' (all of the target's).
        ops = max(report["ops"], 1)
        report["bench_cpu_us_per_op"] = bench_cpu / ops * 1e6
        report["server_cpu_us_per_op"] = servers / ops * 1e6
        # Of which in the kernel (system time): sockets, wake-ups, the loopback device.
        report["bench_system_us_per_op"] = usage.ru_stime / ops * 1e6
        report["server_system_us_per_op"] = servers_system / ops * 1e6
        # Context switches per operation: each one a sleep and a wake-up (or a preemption).
        report["bench_switches_per_op"] = (usage.ru_nvcsw + usage.ru_nivcsw) / ops
        report["server_switches_per_op"] = server_switches / ops
        # Interference: CPUs busy with anything else, and stolen by the hypervisor.
        report["others_cpus"] = max(0.0, busy_after - busy_before - bench_cpu - servers) / wall
        report["steal_cpus"] = (steal_after - steal_before) / wall
        # CPUs left idle: everything waited on something (a wake-up, a reply).
        report["idle_cpus"] = (idle_after - idle_before) / wall
        return report


def figures(report, kind):
    latency = report["latency_us"][kind]
    return {"ops_per_sec": report["ops_per_sec"], "p50_us": latency["p50"],
            "p99_us": latency["p99"], "ops": report["ops"],
            "bench_cpu_us": report["bench_cpu_us_per_op"],
            "server_cpu_us": report["server_cpu_us_per_op"],
            "bench_system_us": report["bench_system_us_per_op"],
            "server_system_us": report["server_system_us_per_op"],
            "idle_cpus": report["idle_cpus"],
            "bench_switches": report["bench_switches_per_op"],
            "server_switches": report["server_switches_per_op"],
            "others_cpus": report["others_cpus"], "steal_cpus": report["steal_cpus"]}


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "loadavg": os.getloadavg()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-size", type=int, default=16)
    parser.add_argument("--quick", action="store_true",
                        help="one round of 1 s on 10000 keys (a smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    parser.add_argument("--pbkv", default="target/release/pbkv")
    parser.add_argument("--redis-server",
                        default=os.environ.get("PBKV_REDIS", "/usr/bin/redis-server"))
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.keys = 1, 1.0, 10_000
    args.pbkv = os.path.abspath(args.pbkv)
    if not os.access(args.pbkv, os.X_OK):
        sys.exit(f"{args.pbkv} not found: run `cargo build --release -p pbkv-tools` first")
    if not shutil.which(args.redis_server):
        sys.exit(f"{args.redis_server} not found: apt-get install redis-server")

    info = machine()
    version = subprocess.run([args.redis_server, "--version"], capture_output=True, text=True)
    info["redis"] = version.stdout.strip()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, Linux {info['kernel']}, "
          f"load average {info['loadavg'][0]:.2f} at the start")
    print(f"redis: {info['redis']}")
    print(f"setup: {args.clients} connections, pipeline {args.pipeline}, {args.keys} keys, "
          f"{args.value_size} B values, {args.duration:g} s per case, {args.rounds} rounds",
          flush=True)

    top = tempfile.mkdtemp(prefix="pbkv-compare-")
    procs = Processes(top)
    results = {name: [] for name, *_ in CASES}
    try:
        redis_primary, redis_replica = start_redis(procs, args.redis_server)
        vs = start_pbkv(procs, args.pbkv)
        bench = Bench(args, procs, vs, redis_primary)
        fill = ["--fill", "--requests", str(args.keys)]
        for target in ("pbkv", "redis"):
            bench.run(target, "put=100", None, fill)
        # The replica holds the filled key space before the first measured round.
        wait_until(60, "the Redis replica to catch up", lambda: resp(redis_replica, "DBSIZE")
                   == resp(redis_primary, "DBSIZE"))
        duration = ["--duration", str(args.duration)]
        for r in range(args.rounds):
            for name, target, mix, wait in CASES:
                report = bench.run(target, mix, wait, duration)
                f = figures(report, mix.split("=")[0])
                results[name].append(f)
                print(f"round {r + 1} {name:<15} {f['ops_per_sec']:>10.0f} ops/s  "
                      f"p50 {f['p50_us'] / 1000:.3f} ms  p99 {f['p99_us'] / 1000:.3f} ms  "
                      f"CPU/op: bench {f['bench_cpu_us']:.1f} us "
                      f"({f['bench_system_us']:.1f} kernel), servers "
                      f"{f['server_cpu_us']:.1f} us ({f['server_system_us']:.1f} kernel); "
                      f"idle {f['idle_cpus']:.2f} CPUs; switches/op: bench "
                      f"{f['bench_switches']:.2f}, servers {f['server_switches']:.2f}; "
                      f"others {f['others_cpus']:.2f} CPUs, steal {f['steal_cpus']:.2f}",
                      flush=True)
        info["loadavg_end"] = os.getloadavg()
    except (RuntimeError, KeyboardInterrupt) as e:
        sys.exit(f"compare: {e or 'interrupted'}")
    finally:
        procs.stop_all()
        shutil.rmtree(top, ignore_errors=True)

    med = lambda name, key: statistics.median(f[key] for f in results[name])
    lo = lambda name, key: min(f[key] for f in results[name])
    hi = lambda name, key: max(f[key] for f in results[name])
    print()
    print("medians over the rounds; min..max across rounds; spread = (max - min) / median;")
    print("CPU per operation in microseconds: the bench's, and the servers' together, each")
    print("with its kernel (system) time (k); CPUs left idle; context switches per")
    print("operation (sw): the bench's, and the servers'")
    print(f"{'case':<15} {'ops/s':>8} {'min..max':>15} {'spread':>7} {'p50 ms':>7}"
          f" {'p99 ms':>7} {'p99 min..max':>13} {'bench':>6} {'k':>5} {'servers':>7}"
          f" {'k':>5} {'idle':>5} {'sw bench':>8} {'sw srv':>6}")
    for name, *_ in CASES:
        m = med(name, "ops_per_sec")
        spread = (hi(name, "ops_per_sec") - lo(name, "ops_per_sec")) / m * 100
        span = f"{lo(name, 'ops_per_sec'):.0f}..{hi(name, 'ops_per_sec'):.0f}"
        p99 = f"{lo(name, 'p99_us') / 1000:.3f}..{hi(name, 'p99_us') / 1000:.3f}"
        print(f"{name:<15} {m:>8.0f} {span:>15} {spread:>6.1f}% "
              f"{med(name, 'p50_us') / 1000:>7.3f} {med(name, 'p99_us') / 1000:>7.3f} {p99:>13}"
              f" {med(name, 'bench_cpu_us'):>6.1f} {med(name, 'bench_system_us'):>5.1f}"
              f" {med(name, 'server_cpu_us'):>7.1f} {med(name, 'server_system_us'):>5.1f}"
              f" {med(name, 'idle_cpus'):>5.2f} {med(name, 'bench_switches'):>8.2f} {med(name, 'server_switches'):>6.2f}")

    def per_round(a, b, key):
        return [x[key] / y[key] for x, y in zip(results[a], results[b])]

    targets = [
        ("P1", "pbkv put ops/s / redis SET ops/s", "pbkv put", "redis SET", "ops_per_sec",
         ">=", 1.0),
        ("P2", "pbkv put ops/s / redis SET+WAIT ops/s", "pbkv put", "redis SET+WAIT",
         "ops_per_sec", ">=", 1.5),
        ("P3", "pbkv get ops/s / redis GET ops/s", "pbkv get", "redis GET", "ops_per_sec",
         ">=", 1.0),
        ("P4", "pbkv put p99 / redis SET+WAIT p99", "pbkv put", "redis SET+WAIT", "p99_us",
         "<=", 1.0),
    ]
    print()
    ratios = {}
    for label, text, a, b, key, op, goal in targets:
        ratio = med(a, key) / med(b, key)
        met = ratio >= goal if op == ">=" else ratio <= goal
        rounds = ", ".join(f"{x:.2f}" for x in per_round(a, b, key))
        ratios[label] = {"ratio": ratio, "goal": f"{op} {goal}", "met": met,
                         "per_round": per_round(a, b, key)}
        print(f"{label}  {text:<40} {ratio:5.2f}  (goal {op} {goal:.1f}: "
              f"{'met' if met else 'missed'}; per round {rounds})")
    others = [f["others_cpus"] for fs in results.values() for f in fs]
    steal = [f["steal_cpus"] for fs in results.values() for f in fs]
    print(f"load average {info['loadavg_end'][0]:.2f} at the end; CPUs busy with other "
          f"processes during the cases: median {statistics.median(others):.2f}, max "
          f"{max(others):.2f}; stolen: median {statistics.median(steal):.2f}, max {max(steal):.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "setup": vars(args), "results": results,
                       "ratios": ratios}, f, indent=1)


if __name__ == "__main__":
    main()
