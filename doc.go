// Package pgadapter makes many Socket.IO servers act as one cluster through PostgreSQL.
//
// Servers built on github.com/zishang520/socket.io/v2 (v2.5.0) use it as their adapter:
//
//	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
//	...
//	io := socket.NewServer(nil, nil)
//	io.SetAdapter(pgadapter.New(pool, nil)) // nil or zero Options work
//
// A broadcast, a room, an acknowledgement, FetchSockets or ServerSideEmit made on one
// server then reaches the clients and servers of every other server using the same
// database and channel prefix, including Node.js servers running
// @socket.io/postgres-adapter 0.5.0 (the wire protocol is Node's).
//
// Delivering to many clients costs a server more than the adapter does. The fastws
// subpackage is a WebSocket transport for engine.io v2.5.0 that writes a broadcast's
// frame once for all clients and each client's batch with one system call, and keeps the
// packets engine.io's own transport loses; call fastws.Install() before the servers
// accept connections, and pgadapter hands it each broadcast encoded once for all clients.
//
// # How it works
//
// Each namespace has a NOTIFY channel, "<prefix>#<namespace>". A server publishes each
// cluster operation there as a JSON notification; messages of 8000 bytes or more, and
// messages carrying binary, go through an attachments table (MessagePack), and the
// notification names the row. Each Builder owns one dedicated LISTEN connection shared by
// all its namespaces, one publisher goroutine that sends every message of the server in
// order (batching what queues up into one round trip and one commit), and a receive
// pipeline that reads attachments concurrently, those that arrive together with one
// query, and applies messages in arrival order. Attachment rows are compressed with lz4
// where the server has it (a setting local to the publishing transaction), because
// PostgreSQL's default, pglz, costs it about ten times as much CPU per row. The
// transactions that insert them commit without waiting for their disk flush (also a
// setting local to the transaction; Options.SynchronousCommit keeps the session's),
// because the flush adds a disk write to each message's latency and makes no delivery
// surer: PostgreSQL keeps no notification across a crash. For the same reason the
// adapter creates the table UNLOGGED (Options.LoggedTable), so that its rows, which live
// for a minute, write no WAL; a notification names its row by id and created_at, so that
// a row made after a crash under a reused id is never taken for the one it names.
//
// # Guarantees
//
//   - Local delivery never waits for PostgreSQL, and keeps working while it is down.
//   - Messages from one server are applied by every other server in the order they were
//     published, and what a server-side event handler does is done before the next
//     message, unless it runs longer than 20 ms (below). Answers to a server's own
//     requests are applied in order among themselves, on a goroutine of their own, which
//     the application's code holding the other does not hold up, until
//     Options.ReceiveQueueSize messages wait behind it.
//   - Delivery between servers is at most once: a message published while PostgreSQL is
//     unreachable, or while a receiver's LISTEN connection is being re-established, is
//     lost for that receiver. Every such loss the adapter can see (publish failures,
//     full queues, unreadable attachments, malformed notifications) is reported through
//     Options.ErrorHandler and the logger, never silently. So is what PostgreSQL never
//     delivered to a server (committed while its LISTEN connection was down, or the last
//     commits before a fast shutdown): each server numbers its messages on a namespace,
//     and the others report the gaps they see (*MissedError).
//   - A panic in code the adapter's goroutines run (a server-side event handler, a
//     request callback, an outgoing-packet listener, the decoder) is recovered and
//     reported as a *PanicError; the message is dropped and the next one handled.
//   - A server-side event handler may block, and may wait for a cluster request of its
//     own: still running 20 ms (wall-clock) after it started, it is left to finish on its
//     goroutine while another applies the next messages. At most 64 are left so at once;
//     beyond, the messages wait for one of them to return. Other code of the
//     application run on the goroutine that applies messages (outgoing-packet
//     listeners, the disconnect listeners of sockets another server disconnects) is not
//     left to itself, and should not block. The ErrorHandler and OnListenerState run on
//     a goroutine of their own, and may block. Request callbacks run
//     on the adapter's goroutines (mostly the one that applies answers, also the
//     heartbeat ticker and timers), and should not block either.
//   - The LISTEN connection is re-established with jittered exponential backoff, every
//     channel is LISTENed again and the server announces itself again, so that the
//     others count it again.
//   - Requests to other servers (FetchSockets, ServerSideEmitWithAck, AllRooms,
//     broadcasts with acknowledgements) wait only for the servers known when they were
//     made, and stop waiting for a server that leaves or times out. FetchSockets,
//     ServerSideEmitWithAck and AllRooms always complete: with every answer, or with the
//     answers so far and ErrTimeout after Options.RequestsTimeout. A broadcast with
//     acknowledgements completes through socket.io's operator, bounded by its Timeout
//     (io.Timeout(d).EmitWithAck), with socket.io's own error when that passes; without
//     a Timeout, socket.io reports a timeout at once, as Node's socket.io does.
//
// # Shutdown
//
// io.Close closes every namespace adapter: each publishes ADAPTER_CLOSE (the others drop
// it at once) and UNLISTENs; with the last one, the Builder's goroutines stop and the
// LISTEN connection is closed. Builder.Close does the same without closing the server.
// Neither waits for the application's code that the goroutines applying messages are
// running (server-side event handlers, request callbacks, outgoing-packet listeners):
// it may be what closes; those goroutines end when it returns.
//
// # Known defects of the socket.io v2.5.0 stack, and what the adapter does
//
//   - engine.io v2.5.0's WebSocket transport stops writing a batch after a packet that
//     carries a pre-encoded frame, losing the packets after it; the in-memory adapter
//     attaches one to every JSON broadcast. The adapter delivers broadcasts locally without
//     it.
//   - socket.io's BroadcastOperator completes a broadcast with acknowledgements when as
//     many responses as clients have arrived; a client acknowledging with no argument or
//     several would stall or end it early. The adapter makes each client contribute
//     exactly one response (its first argument), locally and remotely, as Node does.
//     When no server has the socket a RemoteSocket's emit with an acknowledgement goes
//     to, the operator panics and never calls back; the adapter answers for nobody:
//     the callback gets no arguments and no error.
//   - The same operator reads its expected server count without synchronisation from the
//     goroutine that delivers remote answers: a data race inside socket.io that the race
//     detector reports for any cluster adapter. It is benign on common hardware.
//   - socket.io v2.5.0 never calls Adapter.Init: the adapter announces itself when its
//     channel is LISTENed instead.
package pgadapter
