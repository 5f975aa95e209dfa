# Petty's code-interpreter kernel for bash: one persistent bash per code
# context, driven from here. Each line on stdin is a cell, {"code": ...,
# "env_vars": {...}}; the cell is sourced in that one shell (its variables,
# functions and working directory live on to the next cell), its stdout and
# stderr stream back as they come, and a non-zero status is the cell's
# error. The protocol is kernel.py's: one JSON object per line on stdout,
# ending each cell with number_of_executions and end_of_execution.
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time

out = sys.stdout
lock = threading.Lock()
# A line bash prints after each cell: its status. NUL cannot be in a
# shell string, so no cell's output can forge it.
END = b"\x00petty-end:"
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def emit(obj):
    with lock:
        out.write(json.dumps(obj) + "\n")
        out.flush()


def now_us():
    return int(time.time() * 1_000_000)


class Stream:
    """Reads one of bash's descriptors and emits what it writes, until
    the end marker of the cell; wait() returns the text after the marker
    (the status, on stdout)."""

    def __init__(self, pipe, kind):
        self.pipe = pipe
        self.kind = kind
        self.cond = threading.Condition()
        self.ends = []
        self.closed = False
        threading.Thread(target=self.run, daemon=True).start()

    def out(self, b):
        if b:
            emit({"type": self.kind, "text": b.decode("utf-8", "replace"), "timestamp": now_us()})

    def run(self):
        buf = b""
        fd = self.pipe.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                self.out(buf)
                with self.cond:
                    self.closed = True
                    self.cond.notify_all()
                return
            buf += chunk
            while True:
                at = buf.find(END)
                if at < 0:
                    break
                stop = buf.find(b"\x00", at + len(END))
                if stop < 0:
                    break
                self.out(buf[:at])
                with self.cond:
                    self.ends.append(buf[at + len(END):stop].decode("ascii", "replace"))
                    self.cond.notify_all()
                buf = buf[stop + 1:]
            # Keep what may be a marker still arriving.
            at = buf.find(END)
            if at >= 0:
                keep = len(buf) - at
            else:
                keep = 0
                for n in range(min(len(END) - 1, len(buf)), 0, -1):
                    if END.startswith(buf[-n:]):
                        keep = n
                        break
            self.out(buf[: len(buf) - keep])
            buf = buf[len(buf) - keep:]

    def wait(self):
        """The text after the next end marker; None once bash is gone."""
        with self.cond:
            while not self.ends and not self.closed:
                self.cond.wait()
            return self.ends.pop(0) if self.ends else None


def start():
    shell = subprocess.Popen(
        ["bash", "--noprofile", "--norc"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    return shell, Stream(shell.stdout, "stdout"), Stream(shell.stderr, "stderr")


shell, stdout, stderr = start()
count = 0

for line in sys.stdin:
    try:
        cell = json.loads(line)
    except ValueError:
        continue
    count += 1
    fd, path = tempfile.mkstemp(prefix=".petty-cell-", suffix=".sh")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(cell.get("code") or "")
        f.write("\n")
    # The cell's variables for this cell only: set, then put back.
    env = [(k, str(v)) for k, v in (cell.get("env_vars") or {}).items() if NAME.match(k)]
    before = "".join(
        f'if [ -n "${{{k}+x}}" ]; then __petty_had_{k}=1; __petty_old_{k}="${k}"; '
        f"else __petty_had_{k}=0; fi; export {k}={shlex.quote(v)}\n"
        for k, v in env
    )
    after = "".join(
        f'if [ "$__petty_had_{k}" = 1 ]; then export {k}="$__petty_old_{k}"; else unset {k}; fi; '
        f"unset __petty_had_{k} __petty_old_{k}\n"
        for k, v in env
    )
    script = (
        before
        + f". {shlex.quote(path)} < /dev/null\n"
        + "__petty_rc=$?\n"
        + after
        + "printf '\\0petty-end:%s\\0' \"$__petty_rc\"\n"
        + "printf '\\0petty-end:\\0' >&2\n"
        + "unset __petty_rc\n"
    )
    status = None
    try:
        shell.stdin.write(script.encode())
        shell.stdin.flush()
        status = stdout.wait()
        if status is not None:
            stderr.wait()
    except OSError:
        pass
    try:
        os.unlink(path)
    except OSError:
        pass
    if status is None:
        # The cell ended the shell (`exit`): its state goes, a fresh one
        # takes the next cell.
        code = shell.wait()
        emit(
            {
                "type": "error",
                "name": "Error",
                "value": str(code),
                "traceback": f"bash exited with code {code}; the context's next cell runs in a new shell",
            }
        )
        shell, stdout, stderr = start()
    elif status.strip() not in ("", "0"):
        emit(
            {
                "type": "error",
                "name": "Error",
                "value": status.strip(),
                "traceback": f"the cell ended with exit code {status.strip()}",
            }
        )
    emit({"type": "number_of_executions", "execution_count": count})
    emit({"type": "end_of_execution"})
