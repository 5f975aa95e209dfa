// E2B's JavaScript SDK against `petty serve --e2b-listen`: create, run,
// files, watchDir, fork, kill. Run by tests/it/e2b.rs with Node 20 and E2B_API_URL,
// E2B_SANDBOX_URL, E2B_API_KEY set; prints "ok".
import assert from 'node:assert/strict'
import { Sandbox, CommandExitError, FilesystemEventType } from 'e2b'

const sbx = await Sandbox.create({ timeoutMs: 300_000, metadata: { from: 'js' }, envs: { WHO: 'node' } })
const r = await sbx.commands.run('echo hello $WHO; echo warn >&2')
assert.equal(r.stdout, 'hello node\n')
assert.equal(r.stderr, 'warn\n')
await assert.rejects(sbx.commands.run('exit 4'), (e) => e instanceof CommandExitError && e.exitCode === 4)
const seen = []
await sbx.commands.run('for i in 1 2; do echo $i; sleep 0.2; done', { onStdout: (d) => seen.push(d) })
assert.equal(seen.join(''), '1\n2\n')

await sbx.files.write('/root/js.txt', 'from js')
assert.equal(await sbx.files.read('/root/js.txt'), 'from js')
const names = (await sbx.files.list('/root')).map((e) => e.name)
assert.ok(names.includes('js.txt'), names)
assert.equal(await sbx.files.exists('/root/none'), false)

// watchDir: envd's streamed WatchDir (not the polled watchers Python uses).
await sbx.files.makeDir('/root/seen')
const events = []
const watch = await sbx.files.watchDir('/root/seen', (e) => events.push([e.name, e.type]))
await sbx.files.write('/root/seen/w.txt', 'watched')
await sbx.commands.run('rm /root/seen/w.txt')
const has = (name, type) => events.some(([n, t]) => n === name && t === type)
for (let i = 0; i < 100 && !has('w.txt', FilesystemEventType.REMOVE); i++) {
  await new Promise((r) => setTimeout(r, 100))
}
assert.ok(has('w.txt', FilesystemEventType.CREATE), JSON.stringify(events))
assert.ok(has('w.txt', FilesystemEventType.REMOVE), JSON.stringify(events))
await watch.stop()
// Stopped: later changes are not reported.
const before = events.length
await sbx.files.write('/root/seen/after.txt', 'unseen')
await sbx.commands.run('sleep 0.5')
assert.ok(!events.slice(before).some(([n]) => n === 'after.txt'), JSON.stringify(events))

const info = await sbx.getInfo()
assert.equal(info.metadata.from, 'js')
assert.equal(info.state, 'running')

const kids = await sbx.fork({ count: 2 })
assert.equal(kids.length, 2)
for (const kid of kids) {
  assert.equal(await kid.files.read('/root/js.txt'), 'from js')
  await kid.kill()
}
await sbx.kill()
assert.equal(await Sandbox.kill(sbx.sandboxId), false)
console.log('ok')
