#!/usr/bin/env python3
"""Tree search over shell actions with snapshots, through Petty's REST API.

The loop of examples/tree_search.rs from Python, with nothing but the
standard library: every node of the tree is a named snapshot of a real VM.
Expanding a node restores its snapshot into a fresh sandbox, runs one action
there, scores the result and snapshots it as a child node; the sandbox is
then thrown away. Going back is restoring a snapshot.

The toy problem: a number starts at 1 in /root/n; actions double it, add 3
or square it; the goal is 42. With `petty serve` running:

    python3 examples/tree_search.py

PETTY_URL (default http://127.0.0.1:8080) is the daemon, PETTY_API_KEY its
key if it has keys, PETTY_ITERATIONS how many iterations to run (20).
"""

import json
import math
import os
import sys
import time
import urllib.error
import urllib.request

URL = os.environ.get("PETTY_URL", "http://127.0.0.1:8080").rstrip("/")
KEY = os.environ.get("PETTY_API_KEY")
ITERATIONS = int(os.environ.get("PETTY_ITERATIONS", "20"))
TARGET = 42
ACTIONS = [
    ("double", "n=$(cat /root/n); echo $((n * 2)) > /root/n"),
    ("add3", "n=$(cat /root/n); echo $((n + 3)) > /root/n"),
    ("square", "n=$(cat /root/n); echo $((n * n)) > /root/n"),
]


def call(method, path, body=None, missing_ok=False):
    """One REST call; its JSON answer (None when empty). Errors exit,
    except a 404 when `missing_ok`."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(URL + path, data=data, method=method)
    # Every POST says it sends JSON, body or not (the daemon requires it).
    if method in ("POST", "PUT"):
        req.add_header("Content-Type", "application/json")
    if KEY:
        req.add_header("Authorization", "Bearer " + KEY)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            text = resp.read()
    except urllib.error.HTTPError as e:
        if missing_ok and e.code == 404:
            return None
        sys.exit(f"{method} {path}: {e.code} {e.read().decode(errors='replace')}")
    except urllib.error.URLError as e:
        sys.exit(f"cannot reach Petty at {URL} ({e.reason}); start it with `petty serve`")
    return json.loads(text) if text else None


def score(value):
    return 1.0 / (1.0 + abs(value - TARGET))


def percentile(values, p):
    """The p-th percentile of values (nearest rank)."""
    s = sorted(values)
    rank = math.ceil(p / 100 * len(s))
    return s[min(max(rank, 1), len(s)) - 1]


def main():
    # The root: a sandbox with n = 1, snapshotted.
    call("POST", "/v1/sandboxes", {"name": "root"})
    call("POST", "/v1/sandboxes/root/exec", {"command": "echo 1 > /root/n"})
    call("POST", "/v1/sandboxes/root/snapshots", {"name": "node-0"})
    call("DELETE", "/v1/sandboxes/root")
    tree = [dict(snapshot="node-0", path=[], value=1, parent=None, children=[],
                 untried=list(range(len(ACTIONS))), visits=0.0, reward=0.0)]
    phases = {"restore": [], "act": [], "snapshot": [], "iteration": []}
    started = time.perf_counter()
    best = tree[0]
    try:
        for iteration in range(1, ITERATIONS + 1):
            # Select: descend by UCB1 while the node is fully expanded.
            at = 0
            while not tree[at]["untried"] and tree[at]["children"]:
                parent_visits = max(tree[at]["visits"], 1.0)

                def ucb(i):
                    n = tree[i]
                    v = max(n["visits"], 1.0)
                    return n["reward"] / v + 1.4 * math.sqrt(math.log(parent_visits) / v)

                at = max(tree[at]["children"], key=ucb)
            if not tree[at]["untried"]:
                break
            action = tree[at]["untried"].pop()
            child = f"node-{len(tree)}"
            # Branch: restore the node into a fresh sandbox, run one action.
            t0 = time.perf_counter()
            call("POST", f"/v1/snapshots/{tree[at]['snapshot']}/restore", {"name": "explorer"})
            t1 = time.perf_counter()
            r = call("POST", "/v1/sandboxes/explorer/exec",
                     {"command": f"{ACTIONS[action][1]}; cat /root/n"})
            value = int(r["stdout"].strip())
            t2 = time.perf_counter()
            call("POST", "/v1/sandboxes/explorer/snapshots", {"name": child})
            t3 = time.perf_counter()
            call("DELETE", "/v1/sandboxes/explorer")
            for name, took in (("restore", t1 - t0), ("act", t2 - t1),
                               ("snapshot", t3 - t2), ("iteration", t3 - t0)):
                phases[name].append(took * 1000)
            node = dict(snapshot=child, path=tree[at]["path"] + [ACTIONS[action][0]],
                        value=value, parent=at, children=[],
                        untried=list(range(len(ACTIONS))), visits=0.0, reward=0.0)
            tree.append(node)
            tree[at]["children"].append(len(tree) - 1)
            reward = score(value)
            print(f"iteration {iteration:>2}: {' > '.join(node['path']):<28} n = {value:<6} "
                  f"score {reward:.3f}  {(t3 - t0) * 1000:>4.0f} ms (restore {(t1 - t0) * 1000:.0f}, "
                  f"act {(t2 - t1) * 1000:.0f}, snapshot {(t3 - t2) * 1000:.0f})")
            # Backpropagate.
            i = len(tree) - 1
            while i is not None:
                tree[i]["visits"] += 1
                tree[i]["reward"] += reward
                i = tree[i]["parent"]
            if score(value) > score(best["value"]):
                best = node
            if value == TARGET:
                break
        elapsed = time.perf_counter() - started
        n = len(phases["iteration"])
        print(f"best: {' > '.join(best['path']) or '(root)'} = {best['value']}")
        print(f"{n} iterations in {elapsed:.2f} s: {n / elapsed:.2f} iterations/s")
        for name in ("restore", "act", "snapshot", "iteration"):
            v = phases[name]
            print(f"  {name:<9} p50 {percentile(v, 50):6.1f} ms  p95 {percentile(v, 95):6.1f} ms")
    finally:
        # An explorer an error left behind; then the snapshots, children
        # before parents: a snapshot is refused while another layers on it.
        call("DELETE", "/v1/sandboxes/explorer", missing_ok=True)
        for node in reversed(tree):
            call("DELETE", f"/v1/snapshots/{node['snapshot']}")


if __name__ == "__main__":
    main()
