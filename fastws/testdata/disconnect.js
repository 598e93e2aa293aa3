// A socket.io JavaScript client (socket.io's client bundle over Node's ws, WebSocket
// transport only, permessage-deflate offered as ws does by default), n times at once.
// Each asks the server for its last events ("go") once the server says it is ready, and
// records them and why it was disconnected; the summary is printed as JSON.
//
//   NODE_MODULES=../testdata/node/node_modules node disconnect.js URL N
const path = require('path');
const modules = process.env.NODE_MODULES;
globalThis.WebSocket = require(path.resolve(modules, 'ws'));
globalThis.self = globalThis;
const io = require(path.resolve(modules, 'socket.io/client-dist/socket.io.js'));

const [url, n] = [process.argv[2], +process.argv[3]];
const clients = [];
let done = 0;
for (let i = 0; i < n; i++) {
  const c = { got: [], reasons: [] };
  clients.push(c);
  const s = io(url, { transports: ['websocket'], reconnection: false, forceNew: true });
  // Not on "connect": socket.io v2.5.0 (Go) answers CONNECT before it records the socket
  // and runs its "connection" handlers, and a packet sent at once either closes the
  // connection ("invalid state") or finds no handler yet.
  s.on('ready', () => s.emit('go'));
  s.on('e', (k) => c.got.push(k));
  s.on('disconnect', (reason) => {
    c.reasons.push(reason);
    if (c.reasons.length === 1 && ++done === n) {
      // A second "disconnect", had there been one, would have come by now.
      setTimeout(() => { console.log(JSON.stringify(clients)); process.exit(0); }, 200);
    }
  });
  s.on('connect_error', (e) => { c.reasons.push('connect_error: ' + e.message); if (++done === n) { console.log(JSON.stringify(clients)); process.exit(0); } });
}
setTimeout(() => { console.log(JSON.stringify(clients)); process.exit(3); }, 20000);
