# E2B's code-interpreter SDK against `petty serve --e2b-listen`: stateful
# Python and bash contexts, streamed output, errors, variables. Prints "ok".
import time

from e2b_code_interpreter import Sandbox

sbx = Sandbox.create(timeout=300)
ex = sbx.run_code("x = 41\nprint('hello')\nx + 1")
assert (ex.text, ex.logs.stdout, ex.error) == ("42", ["hello\n"], None), ex
assert sbx.run_code("x * 2").text == "82", "variables live between calls"
ex = sbx.run_code("import subprocess, sys\nprint('to stderr', file=sys.stderr)\nsubprocess.run(['echo', 'from a child'])\n1/0")
assert ex.logs.stdout == ["from a child\n"] and ex.logs.stderr == ["to stderr\n"], ex.logs
assert (ex.error.name, ex.error.value) == ("ZeroDivisionError", "division by zero"), ex.error
assert "ZeroDivisionError" in ex.error.traceback
seen = []
sbx.run_code(
    "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)",
    on_stdout=lambda m: seen.append((time.monotonic(), m.line)),
)
assert [line for _, line in seen] == ["0\n", "1\n", "2\n"], seen
assert seen[-1][0] - seen[0][0] > 0.4, "output streams as it comes"
assert sbx.run_code("import os; os.environ['A']", envs={"A": "b"}).text == "'b'"
ctx = sbx.create_code_context()
assert sbx.run_code("x", context=ctx).error.name == "NameError", "a new context has its own variables"
sbx.run_code("y = 5", context=ctx)
assert sbx.run_code("y", context=ctx).text == "5"
assert ctx.id in [c.id for c in sbx.list_code_contexts()]
sbx.restart_code_context(ctx)
assert sbx.run_code("y", context=ctx).error.name == "NameError", "a restart forgets"
sbx.remove_code_context(ctx)
assert ctx.id not in [c.id for c in sbx.list_code_contexts()]

# Bash: one shell per context, its variables and cwd kept between cells.
ex = sbx.run_code("X=41; cd /tmp", language="bash")
assert (ex.logs.stdout, ex.error) == ([], None), ex
ex = sbx.run_code("echo $((X+1)); pwd; echo to-stderr >&2", language="bash")
assert ex.logs.stdout == ["42\n", "/tmp\n"] or "".join(ex.logs.stdout) == "42\n/tmp\n", ex.logs
assert ex.logs.stderr == ["to-stderr\n"] and ex.error is None, ex
ex = sbx.run_code("echo before; false", language="bash")
assert "".join(ex.logs.stdout) == "before\n" and ex.error is not None, ex
assert ex.error.value == "1", ex.error
assert sbx.run_code("echo $B", language="bash", envs={"B": "from envs"}).logs.stdout == ["from envs\n"]
assert sbx.run_code("echo ${B-unset}", language="bash").logs.stdout == ["unset\n"], "envs are the cell's"
bash = sbx.create_code_context(language="bash")
assert sbx.run_code("echo ${X-none}", context=bash).logs.stdout == ["none\n"], "a context of its own"
sbx.remove_code_context(bash)
# Python's variables are not bash's.
assert sbx.run_code("x").text == "41"
try:
    sbx.run_code("1", language="r")
    raise AssertionError("an unsupported language is refused")
except Exception as e:
    assert "python, bash" in str(e), e
sbx.kill()
print("ok")
