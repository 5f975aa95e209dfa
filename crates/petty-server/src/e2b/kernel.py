# Petty's code-interpreter kernel: one persistent Python process per code
# context. Each line on stdin is a cell, {"code": ..., "env_vars": {...}};
# for each it writes, on its own protocol descriptor, one JSON object per
# line as E2B's code interpreter streams them: stdout/stderr as they come,
# the value of a last expression as the main result, an error, the
# execution count, then end_of_execution. Variables live between cells.
import ast
import json
import os
import sys
import threading
import time
import traceback

proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
lock = threading.Lock()


def emit(obj):
    with lock:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()


def now_us():
    return int(time.time() * 1_000_000)


class Pump:
    """Reads what the cell's code (and its child processes) writes to one
    descriptor and emits it; sync() returns once everything written
    before it was emitted."""

    def __init__(self, fd, kind):
        self.kind = kind
        read, write = os.pipe()
        os.dup2(write, fd)
        os.close(write)
        self.fd = fd
        self.read = read
        self.seen = threading.Event()
        self.marker = ("\x00petty-sync-%d\x00" % fd).encode()
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        buf = b""
        m = self.marker
        while True:
            chunk = os.read(self.read, 65536)
            if not chunk:
                return
            buf += chunk
            while True:
                at = buf.find(m)
                if at < 0:
                    break
                self.out(buf[:at])
                buf = buf[at + len(m):]
                self.seen.set()
            # Keep what may be the start of a marker.
            keep = 0
            for n in range(min(len(m) - 1, len(buf)), 0, -1):
                if m.startswith(buf[-n:]):
                    keep = n
                    break
            self.out(buf[: len(buf) - keep])
            buf = buf[len(buf) - keep:]

    def out(self, b):
        if b:
            emit({"type": self.kind, "text": b.decode("utf-8", "replace"), "timestamp": now_us()})

    def sync(self):
        self.seen.clear()
        os.write(self.fd, self.marker)
        self.seen.wait(10)


stdin = os.fdopen(os.dup(0), "r", encoding="utf-8")
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
pumps = [Pump(1, "stdout"), Pump(2, "stderr")]
sys.stdout = os.fdopen(1, "w", buffering=1, encoding="utf-8", closefd=False)
sys.stderr = os.fdopen(2, "w", buffering=1, encoding="utf-8", closefd=False)

scope = {"__name__": "__main__", "__builtins__": __builtins__}
count = 0

for line in stdin:
    try:
        cell = json.loads(line)
    except ValueError:
        continue
    count += 1
    saved = {}
    for k, v in (cell.get("env_vars") or {}).items():
        saved[k] = os.environ.get(k)
        os.environ[k] = str(v)
    try:
        tree = ast.parse(cell.get("code") or "", "<cell>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<cell>", "exec"), scope)
        value = eval(compile(last, "<cell>", "eval"), scope) if last else None
        sys.stdout.flush()
        sys.stderr.flush()
        for p in pumps:
            p.sync()
        if value is not None:
            emit({"type": "result", "text": repr(value), "is_main_result": True})
    except BaseException as e:  # noqa: B036 -- a cell's SystemExit is its error too
        sys.stdout.flush()
        sys.stderr.flush()
        for p in pumps:
            p.sync()
        emit(
            {
                "type": "error",
                "name": type(e).__name__,
                "value": str(e),
                "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__)),
            }
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    emit({"type": "number_of_executions", "execution_count": count})
    emit({"type": "end_of_execution"})
