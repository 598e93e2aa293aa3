// A Node.js Socket.IO server with @socket.io/postgres-adapter (default options), driven by
// pgadapter's mixed-cluster tests.
//
// Environment: DATABASE_URL, NAME. It prints one JSON object per line on stdout:
//   {"type":"ready","port":N}                       listening
//   {"type":"result","id":I,"result":R}             answer to command I ({"error":...} on failure)
//   {"type":"sent","client":C,"event":E,"args":A}   what the server writes to client C, in order
//   {"type":"sse","event":E,"args":A}               a server-side event received
//   {"type":"error","message":M}                    an error reported by the adapter
// and reads one JSON command per line on stdin (see run below). Binary values travel as
// {"$bin":"<base64>"} both ways.
"use strict";

const http = require("node:http");
const readline = require("node:readline");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/postgres-adapter");
const { Emitter } = require("@socket.io/postgres-emitter");
const pg = require("pg");

const NAME = process.env.NAME || "N";

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function enc(v) {
  if (v === null || v === undefined) return v === undefined ? null : v;
  if (Buffer.isBuffer(v) || v instanceof Uint8Array || v instanceof ArrayBuffer) {
    return { $bin: Buffer.from(v instanceof ArrayBuffer ? new Uint8Array(v) : v).toString("base64") };
  }
  if (Array.isArray(v)) return v.map(enc);
  if (typeof v === "function") return "[function]";
  if (typeof v === "object") {
    const o = {};
    for (const [k, e] of Object.entries(v)) o[k] = enc(e);
    return o;
  }
  return v;
}

function dec(v) {
  if (v === null || typeof v !== "object") return v;
  if (Array.isArray(v)) return v.map(dec);
  if (typeof v.$bin === "string") return Buffer.from(v.$bin, "base64");
  const o = {};
  for (const [k, e] of Object.entries(v)) o[k] = dec(e);
  return o;
}

// @socket.io/postgres-adapter publishes each message with pool.query on whichever pooled
// connection is free, so one server's messages can commit out of order. The adapter holds
// one connection for LISTEN; with max 2, every other query shares the second connection
// and runs in order, which the tests' fences rely on. The adapter options stay default.
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: Number(process.env.NODE_POOL_MAX || 2) });
const httpServer = http.createServer();
const io = new Server(httpServer);
io.adapter(createAdapter(pool, { errorHandler: (err) => out({ type: "error", message: String(err && err.message || err) }) }));
const emitter = new Emitter(pool);

// prepare is the middleware of every namespace: see the "namespace" command.
function prepare(socket, next) {
  const auth = socket.handshake.auth || {};
  for (const room of auth.rooms || []) socket.join(room);
  socket.data = { name: auth.name, node: NAME };
  socket.onAnyOutgoing((event, ...args) => out({ type: "sent", client: auth.name, event, args: enc(args) }));
  socket.on("harness-ping", (cb) => typeof cb === "function" && cb("pong"));
  next();
}
io.use(prepare);

// Benchmark support: server-side events named "bench" carry their send time (ms since
// the epoch, sub-millisecond) and are counted on arrival.
const bench = { count: 0, latencies: [] };
io.on("bench", (sent) => {
  bench.count++;
  bench.latencies.push(performance.timeOrigin + performance.now() - sent);
});

// nspOf is the namespace a command names (cmd.nsp), "/" by default.
function nspOf(cmd) {
  return io.of(cmd.nsp || "/");
}

// operator builds a BroadcastOperator from a command's selection.
function operator(cmd) {
  let op = cmd.from ? socketNamed(cmd.from, cmd.nsp).broadcast : nspOf(cmd);
  if (cmd.rooms && cmd.rooms.length) op = op.to(cmd.rooms);
  if (cmd.except && cmd.except.length) op = op.except(cmd.except);
  const flags = cmd.flags || {};
  if (flags.volatile) op = op.volatile;
  if (flags.local) op = op.local;
  if (flags.compress === false) op = op.compress(false);
  if (cmd.timeout) op = op.timeout(cmd.timeout);
  return op;
}

function socketNamed(name, nsp) {
  for (const s of io.of(nsp || "/").sockets.values()) {
    if (s.data && s.data.name === name) return s;
  }
  throw new Error("no socket named " + name);
}

function describe(s) {
  return { id: s.id, rooms: [...s.rooms], data: s.data, handshake: s.handshake };
}

async function run(cmd) {
  const args = dec(cmd.args || []);
  switch (cmd.op) {
    case "emit":
      operator(cmd).emit(cmd.event, ...args);
      return null;
    case "emitWithAck":
      try {
        return { responses: enc(await operator(cmd).emitWithAck(cmd.event, ...args)) };
      } catch (err) {
        return { error: String(err.message || err) };
      }
    case "socketsJoin":
      operator(cmd).socketsJoin(cmd.target);
      return null;
    case "socketsLeave":
      operator(cmd).socketsLeave(cmd.target);
      return null;
    case "disconnectSockets":
      operator(cmd).disconnectSockets(!!cmd.close);
      return null;
    case "fetchSockets":
      return enc((await operator(cmd).fetchSockets()).map(describe));
    case "serverSideEmit":
      nspOf(cmd).serverSideEmit(cmd.event, ...args);
      return null;
    case "serverSideEmitWithAck":
      try {
        return { responses: enc(await nspOf(cmd).serverSideEmitWithAck(cmd.event, ...args)) };
      } catch (err) {
        return { error: String(err.message || err) };
      }
    case "listen":
      // Records a server-side event; answers acks with cmd.answer.
      nspOf(cmd).on(cmd.event, (...a) => {
        const cb = typeof a[a.length - 1] === "function" ? a.pop() : null;
        out({ type: "sse", event: cmd.event, args: enc(a) });
        if (cb) cb(cmd.answer, "ignored");
      });
      return null;
    case "serverCount":
      return await nspOf(cmd).adapter.serverCount();
    case "sockets":
      return [...io.of(cmd.nsp || "/").sockets.values()].filter((s) => s.data && s.data.name === cmd.name).map((s) => s.id);
    case "emitter": {
      // cmd.action: emit (default), socketsJoin, socketsLeave, disconnectSockets or
      // serverSideEmit; in namespace cmd.nsp if given.
      let e = cmd.nsp ? emitter.of(cmd.nsp) : emitter;
      if (cmd.rooms && cmd.rooms.length) e = e.to(cmd.rooms);
      if (cmd.except && cmd.except.length) e = e.except(cmd.except);
      switch (cmd.action || "emit") {
        case "emit":
          e.emit(cmd.event, ...args);
          break;
        case "socketsJoin":
          e.socketsJoin(cmd.target);
          break;
        case "socketsLeave":
          e.socketsLeave(cmd.target);
          break;
        case "disconnectSockets":
          e.disconnectSockets(!!cmd.close);
          break;
        case "serverSideEmit":
          e.serverSideEmit(cmd.event, ...args);
          break;
        default:
          throw new Error("unknown emitter action " + cmd.action);
      }
      return null;
    }
    case "remote": {
      // Runs cmd.action on the socket called cmd.name among those fetchSockets returns
      // for the selection: a RemoteSocket when it is another server's.
      const s = (await operator(cmd).fetchSockets()).find((s) => s.data && s.data.name === cmd.name);
      if (!s) throw new Error("no fetched socket named " + cmd.name);
      switch (cmd.action) {
        case "join":
          s.join(cmd.target);
          return null;
        case "leave":
          s.leave(cmd.target);
          return null;
        case "emit":
          s.emit(cmd.event, ...args);
          return null;
        case "emitWithAck":
          try {
            return { response: enc(await s.timeout(cmd.ackTimeout).emitWithAck(cmd.event, ...args)) };
          } catch (err) {
            return { error: String(err.message || err) };
          }
        case "disconnect":
          s.disconnect(!!cmd.close);
          return null;
        default:
          throw new Error("unknown remote action " + cmd.action);
      }
    }
    case "namespace":
      // Creates namespace cmd.nsp (and its adapter), with the middleware of "/".
      io.of(cmd.nsp).use(prepare);
      return null;
    case "burst": {
      const payload = cmd.binary ? Buffer.alloc(cmd.size) : "x".repeat(cmd.size);
      for (let i = 0; i < cmd.count; i++) {
        io.serverSideEmit("bench", performance.timeOrigin + performance.now(), payload);
        if (i % 1000 === 999) await new Promise((r) => setImmediate(r));
      }
      return null;
    }
    case "benchStats": {
      const sorted = [...bench.latencies].sort((a, b) => a - b);
      const at = (q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))] : 0);
      return { count: bench.count, p50ms: at(0.5), p99ms: at(0.99), cpuUs: process.cpuUsage().user + process.cpuUsage().system };
    }
    case "close":
      // io.close() closes every namespace adapter, which publishes ADAPTER_CLOSE through
      // the pool; give that query time to run, since the HTTP server's close callback
      // waits for lingering connections.
      io.close();
      httpServer.closeAllConnections();
      setTimeout(() => process.exit(0), 500);
      return null;
    default:
      throw new Error("unknown op " + cmd.op);
  }
}

readline.createInterface({ input: process.stdin }).on("line", async (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    out({ type: "error", message: "bad command: " + line });
    return;
  }
  try {
    out({ type: "result", id: cmd.id, result: await run(cmd) });
  } catch (err) {
    out({ type: "result", id: cmd.id, error: String(err.message || err) });
  }
});
process.stdin.on("end", () => process.exit(0));

httpServer.listen(0, "127.0.0.1", () => out({ type: "ready", port: httpServer.address().port }));
