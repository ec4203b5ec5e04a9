//! The interpreter kernels the agent keeps alive between execs. Each reads
//! requests (`{code, stdin_b64, nonce}`, framed like the agent's channel) from
//! a FIFO, runs the code in one persistent global scope, writes the end
//! sentinel to its stdout and stderr (so the agent knows it has every byte
//! the exec wrote before it), and answers `{exit_code}` on a second FIFO.
//! A final expression's value is printed, as in a notebook.

/// `python3 -c PYTHON <req fifo> <done fifo>`. Buffered stdout (flushed at
/// the end of each exec): gVisor may return short writes on pipes, which
/// buffered writers retry.
pub const PYTHON: &str = r#"
import ast, base64, io, json, os, sys, traceback
_gb_req = open(sys.argv[1], "rb", buffering=0)
_gb_done = open(sys.argv[2], "wb", buffering=0)
del sys.argv[1:]
def _gb_read(n):
    b = b""
    while len(b) < n:
        c = _gb_req.read(n - len(b))
        if not c:
            raise EOFError
        b += c
    return b
def _gb_all(write, data):
    while data:
        data = data[write(data):]
_gb_ns = {"__name__": "__main__", "__builtins__": __builtins__}
while True:
    try:
        _gb_msg = json.loads(_gb_read(int.from_bytes(_gb_read(4), "big")))
    except EOFError:
        break
    _gb_code = 0
    sys.stdin = io.TextIOWrapper(io.BytesIO(base64.b64decode(_gb_msg.get("stdin_b64", ""))))
    try:
        _gb_tree = ast.parse(_gb_msg["code"], "<exec>", "exec")
        _gb_last = None
        if _gb_tree.body and isinstance(_gb_tree.body[-1], ast.Expr):
            _gb_last = ast.Expression(_gb_tree.body.pop().value)
        exec(compile(_gb_tree, "<exec>", "exec"), _gb_ns)
        if _gb_last is not None:
            _gb_value = eval(compile(_gb_last, "<exec>", "eval"), _gb_ns)
            if _gb_value is not None:
                print(repr(_gb_value))
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            _gb_code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            _gb_code = 1
    except BaseException:
        _gb_code = 1
        _t, _v, _tb = sys.exc_info()
        traceback.print_exception(_t, _v, _tb.tb_next if _tb is not None else None)
    for _f in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            _f.flush()
        except Exception:
            pass
    _gb_s = ("\x1egb-end-" + _gb_msg["nonce"] + "\x1e").encode()
    for _fd in (1, 2):
        try:
            _gb_all(lambda d: os.write(_fd, d), _gb_s)
        except OSError:
            pass
    _gb_body = json.dumps({"exit_code": _gb_code}).encode()
    _gb_all(_gb_done.write, len(_gb_body).to_bytes(4, "big") + _gb_body)
"#;

/// `node -e NODE <req fifo> <done fifo>`: code runs with
/// `vm.runInThisContext`, so top-level declarations persist; a promise result
/// is awaited.
pub const NODE: &str = r#"
const fs = require("fs"), vm = require("vm"), util = require("util");
const [reqPath, donePath] = process.argv.slice(-2);
process.argv.splice(-2, 2);
globalThis.require = require;
const report = (e) => { try { fs.writeSync(2, ((e && e.stack) || String(e)) + "\n"); } catch (_) {} };
process.on("uncaughtException", report);
process.on("unhandledRejection", report);
const done = fs.openSync(donePath, "w");
const writeAll = (fd, b) => { let o = 0; while (o < b.length) o += fs.writeSync(fd, b, o); };
const send = (obj) => {
  const body = Buffer.from(JSON.stringify(obj));
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  writeAll(done, Buffer.concat([head, body]));
};
async function run(msg) {
  let code = 0;
  try {
    let v = vm.runInThisContext(msg.code, { filename: "<exec>" });
    if (v && typeof v.then === "function") v = await v;
    if (v !== undefined) console.log(util.inspect(v));
  } catch (e) {
    code = 1;
    report(e);
  }
  const s = Buffer.from("\x1egb-end-" + msg.nonce + "\x1e");
  for (const fd of [1, 2]) { try { writeAll(fd, s); } catch (_) {} }
  send({ exit_code: code });
}
let pending = Buffer.alloc(0);
let queue = Promise.resolve();
const input = fs.createReadStream(reqPath);
input.on("data", (chunk) => {
  pending = Buffer.concat([pending, chunk]);
  while (pending.length >= 4) {
    const n = pending.readUInt32BE(0);
    if (pending.length < 4 + n) break;
    const msg = JSON.parse(pending.subarray(4, 4 + n).toString());
    pending = pending.subarray(4 + n);
    queue = queue.then(() => run(msg));
  }
});
input.on("end", () => process.exit(0));
"#;
