#!/usr/bin/python3
"""A real Prometheus server scrapes a local cluster while it serves a burst of requests.

Starts `moectl cluster up` (tiny bf16 model, 1 attention worker, 2 expert workers) and Debian's
`prometheus` on a free 127.0.0.1 port with a generated config that scrapes the four /metrics
endpoints every second and loads deploy/prometheus/rules.yaml; sends a burst of Generate requests
with `moectl generate --router`; then queries the HTTP API (with a deadline) until it returns
non-zero values for the router's TTFT histogram count and generated-token counter and for the expert
load series, and evaluates every rule expression of rules.yaml once, requiring no query error.
Prometheus and the cluster are always stopped. Exit 0: pass, 1: fail, 77: skip (no prometheus
binary can be installed).
"""
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

SKIP = 77
EXPERT_WORKERS = 2
ATTENTION_WORKERS = 1
OVERALL_DEADLINE_S = 480  # under the ctest TIMEOUT (600), so cleanup always runs

SOURCE_DIR = os.environ.get("MOE_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BINARY_DIR = os.environ.get("MOE_BINARY_DIR") or os.path.join(SOURCE_DIR, "build")
START = time.monotonic()


class Failure(Exception):
    pass


def log(message):
    print(f"[{time.monotonic() - START:6.1f}s] {message}", flush=True)


def remaining(limit):
    """Seconds for a step: at most `limit`, never past the overall deadline."""
    left = OVERALL_DEADLINE_S - (time.monotonic() - START)
    if left <= 0:
        raise Failure("overall deadline passed")
    return min(limit, left)


def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# Ports are picked below the ephemeral range (32768+ on Linux), as tests/integration/local_cluster.cc
# does: an outgoing connection can take an ephemeral port between our check and the server's bind.
# [10000, 31000) leaves room for the metrics block at base + 1000.
PORT_LOW, PORT_HIGH = 10000, 31000


def free_port_block(count, avoid=()):
    """A base such that [base, base+count) and [base+1000, base+1000+count) are free now."""
    rng = random.Random(os.getpid() * 7919 + int(time.time()))
    for _ in range(200):
        base = rng.randrange(PORT_LOW, PORT_HIGH)
        ports = [base + i for i in range(count)] + [base + 1000 + i for i in range(count)]
        if not set(ports) & set(avoid) and all(port_free(p) for p in ports):
            return base
    raise Failure("no free port block")


def find_prometheus():
    path = shutil.which("prometheus")
    if path:
        return path
    log("prometheus missing: running deploy/tests/install_tools.sh")
    subprocess.run([os.path.join(SOURCE_DIR, "deploy", "tests", "install_tools.sh")],
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=remaining(300), check=False)
    return shutil.which("prometheus")


def http_json(url, params=None, timeout=5):
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read().decode())
    except urllib.error.HTTPError as error:  # the API answers errors with a JSON body and 4xx/5xx
        body = error.read().decode(errors="replace")
        try:
            return json.loads(body)
        except ValueError:
            return {"status": "error", "error": f"HTTP {error.code}: {body[:200]}"}


def query(api, expr):
    """Instant query; returns the result list, raises Failure on a query error."""
    answer = http_json(api + "/api/v1/query", {"query": expr})
    if answer.get("status") != "success":
        raise Failure(f"query {expr!r}: {answer.get('errorType')}: {answer.get('error')}")
    return answer["data"]["result"]


def positive_values(result):
    values = []
    for series in result:
        value = float(series["value"][1])
        if not math.isnan(value) and value > 0:
            values.append(value)
    return values


def wait_until(description, predicate, limit, interval=0.5):
    deadline = time.monotonic() + remaining(limit)
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise Failure(f"timed out waiting for {description}")


def stop_process_group(process, name):
    if process is None or process.poll() is not None:
        return
    log(f"stopping {name} (pid {process.pid})")
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def stop_cluster(moectl, state_dir):
    log("moectl cluster down")
    try:
        subprocess.run([moectl, "cluster", "down", "--state-dir", state_dir], timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, check=False)
    except subprocess.TimeoutExpired:
        log("cluster down timed out")
    # Whatever survived (a failed `down`): the pids the supervisor wrote, all children of this test.
    for name in sorted(os.listdir(state_dir)) if os.path.isdir(state_dir) else []:
        if not name.endswith(".pid"):
            continue
        try:
            with open(os.path.join(state_dir, name)) as f:
                pid = int(f.read().strip())
            os.kill(pid, signal.SIGKILL)
            log(f"killed leftover {name[:-4]} (pid {pid})")
        except (ValueError, ProcessLookupError, PermissionError, OSError):
            pass


def tail(path, lines=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def write_config(path, rules_path, targets):
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [rules_path],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": addresses}]}
            for job, addresses in targets.items()
        ],
    }
    with open(path, "w") as f:
        yaml.safe_dump(config, f)


def burst(moectl, router, requests, concurrency):
    """Sends `requests` Generate requests, `concurrency` at a time; returns how many succeeded."""
    ok = 0
    pending = list(range(requests))
    while pending:
        batch, pending = pending[:concurrency], pending[concurrency:]
        procs = [subprocess.Popen([moectl, "generate", "--router", router, "--prompt", f"metrics burst {i}",
                                   "--max-tokens", "8", "--ignore-eos", "--timeout", "60"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for i in batch]
        for p in procs:
            try:
                _, err = p.communicate(timeout=remaining(90))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise Failure("a generate request did not finish in time")
            if p.returncode == 0:
                ok += 1
            else:
                log(f"generate failed ({p.returncode}): {err.decode(errors='replace').strip()}")
    return ok


def rule_expressions(rules_path):
    with open(rules_path) as f:
        doc = yaml.safe_load(f)
    out = []
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            kind = "record" if "record" in rule else "alert"
            out.append((kind, rule.get("record") or rule.get("alert"), rule["expr"]))
    return out


def run(work, moectl, prometheus):
    rules_path = os.path.join(SOURCE_DIR, "deploy", "prometheus", "rules.yaml")
    model = os.path.join(work, "model")
    log("making the tiny bf16 model")
    subprocess.run([moectl, "make-model", "--preset", "tiny", "--dtype", "bf16", "--out", model, "--threads", "1"],
                   check=True, stdout=subprocess.DEVNULL, timeout=remaining(120))

    count = 1 + ATTENTION_WORKERS + EXPERT_WORKERS
    prom_port = None
    for _ in range(50):
        candidate = random.randrange(PORT_LOW, PORT_HIGH)
        if port_free(candidate):
            prom_port = candidate
            break
    if prom_port is None:
        raise Failure("no free port for prometheus")
    base = free_port_block(count, avoid=(prom_port,))
    router = f"127.0.0.1:{base}"
    # moectl cluster up: metrics ports from port + 1000, expert workers, attention workers, router.
    metrics = base + 1000
    targets = {
        "moe-expert-worker": [f"127.0.0.1:{metrics + i}" for i in range(EXPERT_WORKERS)],
        "moe-attention-worker": [f"127.0.0.1:{metrics + EXPERT_WORKERS + i}" for i in range(ATTENTION_WORKERS)],
        "moe-router": [f"127.0.0.1:{metrics + EXPERT_WORKERS + ATTENTION_WORKERS}"],
    }
    state_dir = os.path.join(work, "cluster")
    os.makedirs(state_dir)
    prom_process = None
    prom_log = os.path.join(work, "prometheus.log")
    try:
        log(f"moectl cluster up on {router}")
        # Output to a file, not a pipe: the detached supervisor keeps it open for its lifetime.
        up_out = os.path.join(work, "cluster-up.out")
        with open(up_out, "w") as out:
            up = subprocess.run([moectl, "cluster", "up", "--detach", "--model", model,
                                 "--attention-workers", str(ATTENTION_WORKERS),
                                 "--expert-workers", str(EXPERT_WORKERS), "--port", str(base),
                                 "--state-dir", state_dir, "--startup-timeout", "120"],
                                stdout=out, stderr=subprocess.STDOUT, timeout=remaining(180), check=False)
        if up.returncode != 0:
            raise Failure(f"cluster up failed:\n{tail(up_out)}")

        config = os.path.join(work, "prometheus.yml")
        write_config(config, rules_path, targets)
        api = f"http://127.0.0.1:{prom_port}"
        log(f"starting {prometheus} on {api}")
        with open(prom_log, "w") as out:
            prom_process = subprocess.Popen(
                [prometheus, f"--config.file={config}", f"--storage.tsdb.path={os.path.join(work, 'tsdb')}",
                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=work)

        def ready():
            if prom_process.poll() is not None:
                raise Failure(f"prometheus exited with {prom_process.returncode}:\n{tail(prom_log)}")
            try:
                with urllib.request.urlopen(api + "/-/ready", timeout=2) as r:
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False

        wait_until("prometheus to be ready", ready, 60)

        def targets_up():
            active = http_json(api + "/api/v1/targets").get("data", {}).get("activeTargets", [])
            up_count = sum(1 for t in active if t.get("health") == "up")
            return up_count == count and len(active) == count

        wait_until(f"all {count} targets to be up", targets_up, 30)
        log("all targets up; sending a burst of requests")
        requests = 12
        ok = burst(moectl, router, requests, 4)
        if ok != requests:
            raise Failure(f"only {ok} of {requests} requests succeeded")

        checks = {
            "moe_router_time_to_first_token_seconds_count": 1,
            "moe_router_generation_tokens_total": 1,
            "moe_expert_tokens_total": EXPERT_WORKERS,  # at least one positive layer series per worker
            "moe_expert_load_balance_ratio": 1,
        }
        found = {}

        def all_positive():
            for name, min_instances in checks.items():
                result = query(api, name)
                instances = {s["metric"].get("instance") for s in result
                             if not math.isnan(float(s["value"][1])) and float(s["value"][1]) > 0}
                if len(instances) < min_instances:
                    return False
                found[name] = (len(result), sum(positive_values(result)))
            return True

        wait_until("non-zero TTFT count, generated tokens and expert load series", all_positive, 60)
        for name, (series, total) in found.items():
            log(f"{name}: {series} series, sum of positive values {total:g}")
        # Scrapes are 1 s apart: the last one after the burst brings every token and request.
        want = {"sum(moe_router_generation_tokens_total)": requests * 8,
                "sum(moe_router_time_to_first_token_seconds_count)": requests,
                'sum(moe_router_requests_total{finish_reason="length",code="OK"})': requests}
        seen = {}

        def totals_match():
            for expr, value in want.items():
                result = query(api, expr)
                seen[expr] = float(result[0]["value"][1]) if result else None
            return all(seen[expr] == value for expr, value in want.items())

        try:
            wait_until("the scraped totals to match the burst", totals_match, 20)
        except Failure:
            raise Failure(f"scraped totals {seen}, want {want}")
        log(f"scraped totals match the burst: {want}")

        expressions = rule_expressions(rules_path)
        if not any(kind == "record" for kind, _, _ in expressions):
            raise Failure(f"no recording rule in {rules_path}")
        errors = []
        non_empty = 0
        for kind, name, expr in expressions:
            try:
                if query(api, expr):
                    non_empty += 1
            except Failure as error:
                errors.append(f"{kind} {name}: {error}")
        if errors:
            raise Failure("rule expressions failed:\n  " + "\n  ".join(errors))
        log(f"evaluated {len(expressions)} rule expressions without error ({non_empty} non-empty now)")
        # The loaded rule file parsed and every recording rule is known to the server.
        loaded = http_json(api + "/api/v1/rules").get("data", {}).get("groups", [])
        loaded_records = {r.get("name") for g in loaded for r in g.get("rules", []) if r.get("type") == "recording"}
        missing = {name for kind, name, _ in expressions if kind == "record"} - loaded_records
        if missing:
            raise Failure(f"recording rules not loaded by prometheus: {sorted(missing)}")
        bad = [f"{r.get('name')}: {r.get('lastError')}" for g in loaded for r in g.get("rules", [])
               if r.get("health") == "err"]
        if bad:
            raise Failure("rules evaluated with errors:\n  " + "\n  ".join(bad))
    except Failure:
        print("---- prometheus log\n" + tail(prom_log), flush=True)
        for name in sorted(os.listdir(state_dir)):
            if name.endswith(".log"):
                print(f"---- {name}\n" + tail(os.path.join(state_dir, name), 20), flush=True)
        raise
    finally:
        stop_process_group(prom_process, "prometheus")
        stop_cluster(moectl, state_dir)


def main():
    moectl = os.path.join(BINARY_DIR, "bin", "moectl")
    for binary in ("moectl", "moe-router", "moe-attention-worker", "moe-expert-worker"):
        if not os.access(os.path.join(BINARY_DIR, "bin", binary), os.X_OK):
            print(f"FAIL: {binary} is not built in {BINARY_DIR}/bin", flush=True)
            return 1
    prometheus = find_prometheus()
    if not prometheus:
        print("SKIP: the prometheus binary (Debian package prometheus) cannot be installed", flush=True)
        return SKIP
    work = tempfile.mkdtemp(prefix="moe-prometheus-scrape-")
    try:
        run(work, moectl, prometheus)
    except (Failure, subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        print(f"FAIL: {error}", flush=True)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log("PASS")
    return 0


if __name__ == "__main__":
    # ctest's timeout sends SIGTERM first: turn it into an exception so the finally blocks clean up.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(Failure("terminated")))
    sys.exit(main())
