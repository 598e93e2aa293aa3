// A Node.js Socket.IO server with @socket.io/postgres-adapter 0.5.0, driven by
// cmd/pgadapter-bench as the reference the Go adapter is measured against. It speaks the
// same line protocol as the bench command's Go servers (see cmd/pgadapter-bench/server.go).
//
// Environment: DATABASE_URL, CHANNEL_PREFIX, TABLE_NAME, NODE_POOL_MAX (default 10, pg's
// own default); ADAPTER=memory keeps socket.io's in-memory adapter and uses no PostgreSQL
// (the "socket.io alone" reference). Stdout, one JSON object per line:
//   {"type":"ready","port":N}
//   {"type":"stopped","count":C,"firstUs":F,"lastUs":L}   after {"op":"stop"}
//   {"type":"error","message":M}
// Stdin, one JSON command per line:
//   {"op":"start","size":S,"binary":B,"rate":R,"window":W}
//       emit broadcasts "b" to every client: rate R per second, or, when R is 0, as fast
//       as credits allow (W to begin with, then what "credit" grants)
//   {"op":"credit","n":N}
//   {"op":"stop"}
//   {"op":"quit"}
"use strict";

const http = require("node:http");
const readline = require("node:readline");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/postgres-adapter");
const pg = require("pg");

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const httpServer = http.createServer();
const io = new Server(httpServer);
// A client the server disconnects on its own (a ping timeout, a write error) stops
// receiving: say why, since the phase will count what it missed as lost.
io.on("connection", (socket) => {
  socket.on("disconnect", (reason) => {
    if (!["transport close", "client namespace disconnect", "server shutting down"].includes(reason)) {
      out({ type: "disconnect", message: `client ${socket.id} disconnected: ${reason}` });
    }
  });
});
if (process.env.ADAPTER !== "memory") {
  const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: Number(process.env.NODE_POOL_MAX || 10) });
  pool.on("error", (err) => out({ type: "error", message: "pool: " + String(err && err.message || err) }));
  io.adapter(
    createAdapter(pool, {
      channelPrefix: process.env.CHANNEL_PREFIX || "socket.io",
      tableName: process.env.TABLE_NAME || "socket_io_attachments",
      errorHandler: (err) => out({ type: "error", message: String(err && err.message || err) }),
    }),
  );
}

// CLOCK_MONOTONIC, as every process of the benchmark stamps with (see
// cmd/pgadapter-bench/clock.go): performance.timeOrigin's wall-clock time is taken at
// another instant than performance.now()'s origin, off by a millisecond or more on a
// loaded machine.
function nowUs() {
  return Number(process.hrtime.bigint() / 1000n);
}

const pad = "x".repeat(1 << 20);
const bin = Buffer.alloc(1 << 20, 7);

// Sender state: one run at a time.
let run = null;

function emitOne(r) {
  const seq = r.base + r.sent++;
  const t = nowUs();
  if (r.first === 0) r.first = t;
  if (r.binary) {
    io.emit("b", { s: seq, t }, bin.subarray(0, r.size));
  } else {
    // {"s":seq,"t":t,"p":"..."} is exactly size bytes of JSON.
    const fixed = 18 + String(seq).length + String(t).length;
    io.emit("b", { s: seq, t, p: pad.slice(0, Math.max(0, r.size - fixed)) });
  }
  r.last = nowUs();
}

// pump emits while credits last, yielding to the event loop every 64 emits so that
// credits, stop and the adapter's own I/O are handled.
function pump(r) {
  if (r.scheduled || !r.running) return;
  r.scheduled = true;
  setImmediate(() => {
    r.scheduled = false;
    let n = 0;
    while (r.running && r.credits > 0 && n < 64) {
      emitOne(r);
      r.credits--;
      n++;
    }
    if (r.running && r.credits > 0) pump(r);
  });
}

function start(cmd) {
  const r = { size: cmd.size, binary: !!cmd.binary, base: cmd.base || 0, sent: 0, first: 0, last: 0, running: true, credits: cmd.window || 0, scheduled: false };
  run = r;
  if (cmd.rate > 0) {
    const t0 = performance.now();
    r.timer = setInterval(() => {
      const due = Math.floor(((performance.now() - t0) / 1000) * cmd.rate);
      while (r.running && r.sent < due) emitOne(r);
    }, 1);
  } else {
    pump(r);
  }
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    out({ type: "error", message: "bad command: " + line });
    return;
  }
  switch (cmd.op) {
    case "start":
      start(cmd);
      break;
    case "credit":
      if (run) {
        run.credits += cmd.n;
        pump(run);
      }
      break;
    case "stop":
      if (run) {
        run.running = false;
        if (run.timer) clearInterval(run.timer);
        out({ type: "stopped", count: run.sent, firstUs: run.first, lastUs: run.last });
        run = null;
      } else {
        out({ type: "stopped", count: 0, firstUs: 0, lastUs: 0 });
      }
      break;
    case "quit":
      io.close();
      httpServer.closeAllConnections();
      setTimeout(() => process.exit(0), 300);
      break;
    default:
      out({ type: "error", message: "unknown op " + cmd.op });
  }
});
process.stdin.on("end", () => process.exit(0));

httpServer.listen(0, "127.0.0.1", () => out({ type: "ready", port: httpServer.address().port }));
