#!/usr/bin/env python3
"""Failover benchmark: time from kill -9 (or SIGTERM) of one worker to the next token of each stream.

A local cluster (`moectl cluster up --detach`) serves N concurrent greedy streams twice: once
undisturbed (the reference), once with one worker killed when every stream has streamed a few
tokens. For the disturbed run it reports:
  - failed streams and streams whose tokens differ from the reference (both must be 0);
  - for each stream, the time from the kill to its first token after it; the maximum over streams
    is "kill to first token after failover", the median next to the reference's median gap between
    two tokens (what a stream sees without a fault);
  - when the supervisor restarted the killed worker (from its log).

Victims: `expert` (expert-0 of a cluster whose experts all have 2 replicas: the attention worker
re-sends the round to the surviving replica) or `attention` (attention-0 of 2: the router migrates
its streams to attention-1). A benchmark, never a test (docs/contributing.md#benchmarks).

Usage: bench/cluster/failover_bench.py [--model DIR] [--victim expert|attention] [--signal KILL|TERM]
                                       [--streams 32] [--max-tokens 160] [--kill-after 16]
The model defaults to /tmp/models/tiny-bf16 (made with `moectl make-model --preset tiny`).
"""

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="/tmp/models/tiny-bf16")
    p.add_argument("--bin", default=os.path.join(os.environ.get("MOE_BINARY_DIR", "build"), "bin"))
    p.add_argument("--victim", choices=["expert", "attention"], default="expert")
    p.add_argument("--signal", choices=["KILL", "TERM"], default="KILL")
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--kill-after", type=int, default=16, help="tokens every stream has before the kill")
    args = p.parse_args()
    if args.streams < 1 or args.max_tokens < 2 or not 1 <= args.kill_after < args.max_tokens:
        p.error("need --streams >= 1 and 1 <= --kill-after < --max-tokens")
    return args


class Stream:
    """One `moectl generate --router ... --json` process; token arrival times on this clock."""

    def __init__(self, moectl, router, index, max_tokens):
        self.index = index
        self.tokens = []  # (arrival time, token id)
        self.error = None
        self.proc = subprocess.Popen(
            [moectl, "generate", "--router", router, "--prompt", f"Stream {index}: tell me a story",
             "--max-tokens", str(max_tokens), "--temperature", "0", "--ignore-eos", "--json",
             "--timeout", "600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            now = time.monotonic()
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "id" in msg:
                self.tokens.append((now, msg["id"]))
        rc = self.proc.wait()
        if rc != 0:
            self.error = self.proc.stderr.read().strip() or f"exit {rc}"

    def join(self):
        self.thread.join()


def run_round(args, moectl, router, on_ready=None):
    streams = [Stream(moectl, router, i, args.max_tokens) for i in range(args.streams)]
    fired = None
    if on_ready is not None:
        while fired is None:
            if all(len(s.tokens) >= args.kill_after or s.error or s.proc.poll() is not None for s in streams):
                fired = on_ready()
            time.sleep(0.002)
    for s in streams:
        s.join()
    return streams, fired


def main():
    args = parse_args()
    moectl = os.path.join(args.bin, "moectl")
    for b in ["moectl", "moe-router", "moe-attention-worker", "moe-expert-worker"]:
        if not os.access(os.path.join(args.bin, b), os.X_OK):
            sys.exit(f"{args.bin}/{b} not built")
    if not os.path.isdir(args.model):
        sys.exit(f"no model at {args.model}; make it with: {moectl} make-model --preset tiny --out {args.model}")

    state = tempfile.mkdtemp(prefix="failover-bench.")
    port = 30000 + random.randrange(20000)
    topology = (["--attention-workers", "1", "--expert-workers", "4", "--expert-replicas", "2"]
                if args.victim == "expert" else ["--attention-workers", "2", "--expert-workers", "2"])
    victim = "expert-0" if args.victim == "expert" else "attention-0"
    up = subprocess.run([moectl, "cluster", "up", "--detach", "--model", args.model, "--port", str(port),
                         "--state-dir", state, "--kv-cache-gib", "1"] + topology,
                        capture_output=True, text=True)
    if up.returncode != 0:
        sys.exit(f"cluster up failed: {up.stderr}")
    router = up.stdout.strip().splitlines()[0]
    try:
        reference, _ = run_round(args, moectl, router)
        if any(s.error for s in reference):
            sys.exit("the undisturbed round failed: " + next(s.error for s in reference if s.error))

        def kill():
            with open(os.path.join(state, victim + ".pid")) as f:
                pid = int(f.read())
            t = time.monotonic()
            os.kill(pid, signal.SIGKILL if args.signal == "KILL" else signal.SIGTERM)
            return t

        disturbed, t_kill = run_round(args, moectl, router, on_ready=kill)
    finally:
        subprocess.run([moectl, "cluster", "down", "--state-dir", state], capture_output=True)

    failed = [s for s in disturbed if s.error]
    changed = [s for s, r in zip(disturbed, reference)
               if not s.error and [t for _, t in s.tokens] != [t for _, t in r.tokens]]
    after = [next((t for t, _ in s.tokens if t > t_kill), None) for s in disturbed if not s.error]
    waits = [t - t_kill for t in after if t is not None]
    gaps = [b[0] - a[0] for s in reference for a, b in zip(s.tokens, s.tokens[1:])]
    restarted = None
    try:
        with open(os.path.join(state, "supervisor.log")) as f:
            restarted = any(f"restarting {victim}" in line for line in f)
    except OSError:
        pass

    print(f"# {args.victim} worker {victim} got SIG{args.signal} once each of {args.streams} greedy streams "
          f"had {args.kill_after} of {args.max_tokens} tokens (model {args.model})")
    print("| measure | value |")
    print("|---|---|")
    print(f"| failed streams | {len(failed)} |")
    print(f"| streams whose tokens differ from the undisturbed run | {len(changed)} |")
    if waits:
        print(f"| kill to first token after failover (max over streams) | {max(waits) * 1e3:.0f} ms |")
        print(f"| kill to next token (median over streams) | {statistics.median(waits) * 1e3:.0f} ms |")
    print(f"| gap between two tokens, undisturbed (median) | {statistics.median(gaps) * 1e3:.1f} ms |")
    print(f"| supervisor restarted {victim} | {'yes' if restarted else 'no' if restarted is not None else '?'} |")
    for s in failed[:3]:
        print(f"# stream {s.index} failed: {s.error.splitlines()[-1] if s.error else ''}")
    print(f"RESULT victim={args.victim} signal={args.signal} streams={args.streams} failed={len(failed)} "
          f"changed={len(changed)} max_wait_ms={max(waits) * 1e3 if waits else -1:.0f} "
          f"median_gap_ms={statistics.median(gaps) * 1e3:.1f}")
    return 1 if failed or changed else 0


if __name__ == "__main__":
    sys.exit(main())
