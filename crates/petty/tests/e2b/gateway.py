# E2B's Python SDK against `petty gateway --e2b-listen` over two nodes:
# the SDK sees one endpoint (E2B_API_URL = E2B_SANDBOX_URL = the gateway);
# creates are placed on either node, and every call reaches its sandbox.
import json
import os
import urllib.request

from e2b import Sandbox

boxes = [Sandbox.create(timeout=120) for _ in range(4)]
for i, sbx in enumerate(boxes):
    r = sbx.commands.run(f"echo hello-{i}")
    assert r.stdout == f"hello-{i}\n", r
    sbx.files.write("/root/note.txt", f"note {i}")
    assert sbx.files.read("/root/note.txt") == f"note {i}"
    bg = sbx.commands.run("sleep 30", background=True)
    assert bg.pid in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(bg.pid)

# Where they went, from the gateway's own API.
with urllib.request.urlopen(os.environ["PETTY_API_URL"] + "/v1/sandboxes") as resp:
    views = json.load(resp)
nodes = {v["node"] for v in views if v["id"] in {b.sandbox_id for b in boxes}}
assert len(nodes) == 2, f"four creates over two nodes used {nodes}"

listed = {s.sandbox_id for s in Sandbox.list().next_items()}
assert {b.sandbox_id for b in boxes} <= listed, listed
for sbx in boxes:
    sbx.kill()
print("ok")
