# E2B's autoPause against `petty serve --e2b-listen`: a sandbox whose
# timeout pauses it (a hibernation) rather than killing it, listed as
# paused, given a timeout while paused, brought back by a call into it
# (autoResume) and by connect, each time with a fresh timeout. Run by
# tests/it/e2b.rs; prints "ok".
import time
from datetime import datetime, timezone

from e2b import Sandbox, SandboxQuery, SandboxState


def wait_for(sandbox_id, state):
    """Polls (at most three minutes) until the sandbox is listed in `state`
    (the list shows a sandbox once it has settled there)."""
    query = SandboxQuery(state=[SandboxState(state)])
    for _ in range(900):
        if sandbox_id in [s.sandbox_id for s in Sandbox.list(query=query).next_items()]:
            return
        time.sleep(0.2)
    raise AssertionError(f"{sandbox_id} never became {state}")


def seconds_left(sandbox_id):
    return (Sandbox.get_info(sandbox_id).end_at - datetime.now(timezone.utc)).total_seconds()


sbx = Sandbox.create(timeout=4, lifecycle={"on_timeout": "pause", "auto_resume": True})
sid = sbx.sandbox_id
sbx.files.write("/root/kept", "kept")
sbx.commands.run("echo 41 > /root/n")
info = sbx.get_info()
assert info.lifecycle == {"on_timeout": "pause", "auto_resume": True}, info.lifecycle

# Its timeout passes: paused, not killed; listed as paused.
wait_for(sid, "paused")
paused = [s.sandbox_id for s in Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()]
assert sid in paused, paused

# A timeout set while paused is the one it comes back with.
Sandbox.set_timeout(sid, 600)
assert Sandbox.get_info(sid).state.value == "paused"

# autoResume: a call into it brings it back, its files and memory kept.
assert sbx.files.read("/root/kept") == "kept"
assert Sandbox.get_info(sid).state.value == "running"
assert 300 < seconds_left(sid) <= 600, seconds_left(sid)
assert sbx.commands.run("echo $(( $(cat /root/n) + 1 ))").stdout == "42\n"

# Paused by its timeout again, then connect: running, a fresh timeout.
sbx.set_timeout(3)
wait_for(sid, "paused")
back = Sandbox.connect(sid, timeout=900)
assert Sandbox.get_info(sid).state.value == "running"
assert 600 < seconds_left(sid) <= 900, seconds_left(sid)
assert back.files.read("/root/kept") == "kept"

# Without autoPause a timeout still kills.
gone = Sandbox.create(timeout=3)
for _ in range(900):
    if gone.sandbox_id not in [s.sandbox_id for s in Sandbox.list().next_items()]:
        break
    time.sleep(0.2)
else:
    raise AssertionError("a sandbox without autoPause outlived its timeout")
back.kill()
print("ok")
