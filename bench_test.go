package pgadapter

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/zishang520/engine.io/v2/types"
	"github.com/zishang520/socket.io-go-parser/v2/parser"
	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter/internal/pgtest"
	"github.com/socketio-pg/pgadapter/internal/wire"
)

// Throughput between servers, against PostgreSQL's own NOTIFY ceiling measured in the
// same run. Compare msgs/s across the sub-benchmarks as ratios: these machines are noisy.
//
//	go test -run=NONE -bench=. -benchtime=20000x .

// listenCount LISTENs on channel and returns a function that waits until n
// notifications have arrived.
func listenCount(b *testing.B, channel string) (wait func(n int64), stop func()) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		b.Fatal(err)
	}
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := conn.WaitForNotification(ctx); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	wait = func(n int64) {
		deadline := time.Now().Add(time.Minute)
		for got.Load() < n {
			if time.Now().After(deadline) {
				b.Fatalf("received %d of %d notifications", got.Load(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	stop = func() {
		cancel()
		<-done
		conn.Close(context.Background())
	}
	return wait, stop
}

// BenchmarkPostgresNotify is the baseline: 100-byte notifications committed one per
// transaction (NOTIFY's commit lock is the limit), and 100 per transaction, from 4
// connections, received by one listener.
func BenchmarkPostgresNotify(b *testing.B) {
	for _, perTx := range []int{1, 100} {
		b.Run(fmt.Sprintf("per-tx-%d", perTx), func(b *testing.B) {
			channel := pgtest.Name("bench")
			wait, stop := listenCount(b, channel)
			defer stop()
			pool := newPool(b)
			defer pool.Close()
			payload := strings.Repeat("x", 100)
			var next atomic.Int64
			total := int64(b.N)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						first := next.Add(int64(perTx)) - int64(perTx)
						if first >= total {
							return
						}
						batch := &pgx.Batch{}
						for i := first; i < min(first+int64(perTx), total); i++ {
							// unique payloads: PostgreSQL merges equal ones within a transaction
							batch.Queue("SELECT pg_notify($1, $2)", channel, fmt.Sprint(i, payload))
						}
						if err := pool.SendBatch(context.Background(), batch).Close(); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			wait(total)
			b.ReportMetric(float64(total)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// BenchmarkNotifyStatements compares the publisher's two statements for a run of inline
// messages, 256 to a statement as in a full batch, from one connection to two listeners
// (the two servers of a cluster): NotifyMany, a channel per message, and NotifyOne, the
// channel once, for a run on one namespace.
func BenchmarkNotifyStatements(b *testing.B) {
	st := wire.NewStatements("unused")
	for _, c := range []struct {
		name string
		args func(channel string, chans, payloads []string) []any
		sql  string
	}{
		{"many", func(_ string, chans, payloads []string) []any { return []any{chans, payloads} }, st.NotifyMany},
		{"one", func(channel string, _, payloads []string) []any { return []any{channel, payloads} }, st.NotifyOne},
	} {
		b.Run(c.name, func(b *testing.B) {
			const perStatement = 256
			channel := pgtest.Name("bench")
			wait1, stop1 := listenCount(b, channel)
			defer stop1()
			wait2, stop2 := listenCount(b, channel)
			defer stop2()
			conn, err := pgx.Connect(context.Background(), dbURL)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close(context.Background())
			pad := strings.Repeat("x", 100)
			chans := make([]string, perStatement)
			payloads := make([]string, perStatement)
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			sent := 0
			for sent < b.N {
				n := min(perStatement, b.N-sent)
				for i := range n {
					chans[i], payloads[i] = channel, fmt.Sprint(sent+i, pad) // unique: PostgreSQL merges equal ones
				}
				if _, err := conn.Exec(context.Background(), c.sql, c.args(channel, chans[:n], payloads[:n])...); err != nil {
					b.Fatal(err)
				}
				sent += n
			}
			wait1(int64(b.N))
			wait2(int64(b.N))
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// BenchmarkClusterBroadcast measures broadcasts from server A applied by server B (no
// clients: delivery to sockets is not what is measured), with bounded in-flight, and the
// latency from Emit on A to application on B.
func BenchmarkClusterBroadcast(b *testing.B) {
	for _, c := range []struct {
		name    string
		payload any
		tables  []bool // Options.LoggedTable: the attachment payloads run with both
	}{
		{"json-100B", strings.Repeat("x", 100), []bool{false}},
		{"json-20KB", strings.Repeat("x", 20000), []bool{false, true}},
		{"binary-1KB", make([]byte, 1024), []bool{false, true}},
	} {
		for _, logged := range c.tables {
			name := c.name
			if len(c.tables) > 1 {
				name += map[bool]string{false: "/table=unlogged", true: "/table=logged"}[logged]
			}
			b.Run(name, func(b *testing.B) {
				a, probe := benchCluster(b, func(o *Options) { o.LoggedTable = logged })
				const window = 4000 // bounded in-flight
				wal := walPosition(b, a)
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				for i := 0; i < b.N; i++ {
					for int64(i)-probe.applied.Load() > window {
						time.Sleep(100 * time.Microsecond)
					}
					a.io.Emit("bench", float64(time.Now().UnixNano()), c.payload)
				}
				probe.wait(b, b.N)
				elapsed := time.Since(start)
				b.StopTimer()
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
				// Everything the server wrote to its WAL meanwhile, the other sessions'
				// too: on a server of its own, the cluster's.
				b.ReportMetric(float64(walPosition(b, a)-wal)/float64(b.N), "WAL-B/msg")
				probe.report(b)
			})
		}
	}
}

// walPosition returns PostgreSQL's current WAL write position, in bytes.
func walPosition(b *testing.B, n *node) int64 {
	b.Helper()
	var pos int64
	if err := n.pool.QueryRow(context.Background(), "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").Scan(&pos); err != nil {
		b.Fatal(err)
	}
	return pos
}

// BenchmarkClusterLatencyPaced emits broadcasts at 1000 per second and reports the
// latency from Emit on A to application on B, with the publishing transactions
// committing asynchronously (the default) and synchronously (Options.SynchronousCommit).
// On a server with fsync on, as PostgreSQL's default configuration has it (point
// DATABASE_URL at one), the two differ by a disk flush per commit for 1 KB binary
// broadcasts, whose transactions insert a row; a transaction that only notifies writes
// no WAL before its commit record, and PostgreSQL does not flush that. The temporary
// server of the tests runs with fsync off, where they differ by the statement that sets
// it.
func BenchmarkClusterLatencyPaced(b *testing.B) {
	// A burst of broadcasts before the timer starts takes out of the figures what happens
	// once: creating the table, preparing statements and opening the pools' connections
	// (60-70 ms each on the development machine, where the first concurrent attachments
	// used to hold the next 80 broadcasts back).
	const warmup = 20
	for _, payload := range []struct {
		name  string
		value any
	}{{"json-100B", strings.Repeat("x", 100)}, {"binary-1KB", make([]byte, 1024)}} {
		for _, sync := range []bool{false, true} {
			b.Run(payload.name+map[bool]string{false: "/commit=async", true: "/commit=sync"}[sync], func(b *testing.B) {
				a, probe := benchCluster(b, func(o *Options) { o.SynchronousCommit = sync })
				for range warmup {
					a.io.Emit("bench", float64(time.Now().UnixNano()), payload.value)
				}
				probe.wait(b, warmup)
				probe.reset()
				tick := time.NewTicker(time.Millisecond)
				defer tick.Stop()
				b.ResetTimer()
				for range b.N {
					<-tick.C
					a.io.Emit("bench", float64(time.Now().UnixNano()), payload.value)
				}
				probe.wait(b, b.N)
				b.StopTimer()
				probe.report(b)
			})
		}
	}
}

// latencyProbe records what server B applies.
type latencyProbe struct {
	applied   atomic.Int64
	mu        sync.Mutex
	latencies []time.Duration
	b         *Builder
}

// benchCluster starts servers A and B, with the options set changes (when not nil); B's
// probe records each broadcast A sends with its send time as first argument.
func benchCluster(b *testing.B, set func(*Options)) (*node, *latencyProbe) {
	b.Helper()
	opts := testOptions(b)
	if set != nil {
		set(&opts)
	}
	a := startNode(b, "A", opts)
	probe := &latencyProbe{latencies: make([]time.Duration, 0, b.N)}
	// The hook must be set before B's first adapter: B is made by hand.
	pool := newPool(b)
	probe.b = New(pool, &opts)
	probe.b.applied = func(m *wire.Message) {
		var args []any
		switch d := m.Data.(type) {
		case *wire.BroadcastData:
			args, _ = d.Packet.Args()
		case *wire.ServerSideEmitData:
			args = d.Packet
		}
		if len(args) > 1 {
			if sent, ok := stamp(args[1]); ok {
				probe.mu.Lock()
				probe.latencies = append(probe.latencies, time.Duration(time.Now().UnixNano()-sent))
				probe.mu.Unlock()
				probe.applied.Add(1)
			}
		}
	}
	bsrv := newServerFor(b, probe.b, pool)
	waitServerCount(b, []*node{a, bsrv}, 2)
	return a, probe
}

// stamp reads a send time in Unix nanoseconds, sent as a float64: beyond 2^53, it
// arrives as the integer it names (see the README on numbers), an int64. The probe
// looked for a float64 only, and saw nothing arrive.
func stamp(v any) (int64, bool) {
	switch v := v.(type) {
	case float64:
		return int64(v), true
	case int64:
		return v, true
	case uint64:
		return int64(v), true
	}
	return 0, false
}

func (p *latencyProbe) wait(b *testing.B, n int) {
	deadline := time.Now().Add(time.Minute)
	for p.applied.Load() < int64(n) {
		if time.Now().After(deadline) {
			b.Fatalf("applied %d of %d (drops %d)", p.applied.Load(), n, p.b.drops.n.Load())
		}
		time.Sleep(time.Millisecond)
	}
}

// reset forgets what the probe has recorded.
func (p *latencyProbe) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.latencies = p.latencies[:0]
	p.applied.Store(0)
}

func (p *latencyProbe) report(b *testing.B) {
	p.mu.Lock()
	defer p.mu.Unlock()
	slices.Sort(p.latencies)
	b.ReportMetric(float64(p.latencies[len(p.latencies)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(p.latencies[len(p.latencies)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkServerSideEmitGoVsNode sends the same server-side events from server A to
// server B on a cluster of two Go servers and on a cluster of two Node.js servers
// (@socket.io/postgres-adapter 0.5.0, pg pool of 10), in the same run, and reports the
// rate at which B applied them and the latency from A's call to B's handler. Run with
// -benchtime=Nx to choose the count.
func BenchmarkServerSideEmitGoVsNode(b *testing.B) {
	payloads := []struct {
		name   string
		size   int
		binary bool
	}{{"json-100B", 100, false}, {"json-20KB", 20000, false}, {"binary-1KB", 1024, true}}
	for _, p := range payloads {
		b.Run("go/"+p.name, func(b *testing.B) {
			a, probe := benchCluster(b, nil)
			var payload any = strings.Repeat("x", p.size)
			if p.binary {
				payload = make([]byte, p.size)
			}
			b.ResetTimer()
			start := time.Now()
			for range b.N { // no in-flight window: a burst, as Node's
				a.io.ServerSideEmit("bench", float64(time.Now().UnixNano()), payload)
			}
			probe.wait(b, b.N)
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
			b.StopTimer()
			probe.report(b)
		})
		b.Run("node/"+p.name, func(b *testing.B) {
			requireNode(b)
			db := mixedDatabase(b)
			n1 := startNodeProc(b, "N1", db, "NODE_POOL_MAX=10")
			n2 := startNodeProc(b, "N2", db, "NODE_POOL_MAX=10")
			eventually(b, "the Node servers count each other", func() bool { return n1.serverCount(b) == 2 && n2.serverCount(b) == 2 })
			b.ResetTimer()
			start := time.Now()
			n1.call(b, map[string]any{"op": "burst", "count": b.N, "size": p.size, "binary": p.binary})
			var stats map[string]any
			deadline := time.Now().Add(2 * time.Minute)
			for {
				stats = n2.call(b, map[string]any{"op": "benchStats"}).(map[string]any)
				if int(stats["count"].(float64)) >= b.N {
					break
				}
				if time.Now().After(deadline) {
					b.Logf("Node applied %v of %d", stats["count"], b.N)
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(stats["count"].(float64)/elapsed.Seconds(), "msgs/s")
			b.ReportMetric(stats["count"].(float64), "applied")
			b.ReportMetric(float64(b.N)-stats["count"].(float64), "lost") // the Go side fails on any
			b.ReportMetric(stats["p50ms"].(float64)*1000, "p50-µs")
			b.ReportMetric(stats["p99ms"].(float64)*1000, "p99-µs")
		})
	}
}

// BenchmarkDispatch is the CPU path of one broadcast received from another server,
// without PostgreSQL or sockets: the own-message check, decoding, and encoding the packet
// for this server's clients. The other hot paths: BenchmarkEncode and BenchmarkDecode in
// internal/wire, and BenchmarkClusterBroadcast end to end.
func BenchmarkDispatch(b *testing.B) {
	m := &wire.Message{Type: wire.Broadcast, UID: "0123456789abcdef", Nsp: "/", Data: &wire.BroadcastData{
		Packet: wire.Packet{Type: 2, Data: []any{"chat", map[string]any{"s": 1.0, "t": 2.0, "p": strings.Repeat("x", 80)}}},
		Opts:   wire.Opts{Rooms: []string{"room1"}},
	}}
	payload, err := wire.EncodeJSON(m)
	if err != nil {
		b.Fatal(err)
	}
	a := &Adapter{ownSuffix: wire.OwnSuffix("fedcba9876543210"), ownPrefix: wire.OwnPrefix("fedcba9876543210")}
	for _, c := range []struct {
		name     string
		dispatch func() error
	}{
		// the arguments' text passes through (the adapter's path)
		{"raw", func() error {
			n, err := wire.DecodeNotificationRaw(payload)
			if err != nil {
				return err
			}
			d := n.Message.Data.(*wire.BroadcastData)
			_ = broadcastOpts(d.Opts)
			encodeEvent(&parser.Packet{Type: parser.EVENT, Nsp: "/"}, d.Packet.Raw)
			return nil
		}},
		// the arguments decoded into a tree and written again by the codec
		{"tree", func() error {
			n, err := wire.DecodeNotification(payload)
			if err != nil {
				return err
			}
			d := n.Message.Data.(*wire.BroadcastData)
			_ = broadcastOpts(d.Opts)
			_, err = wire.AppendJSON([]byte{'2'}, d.Packet.Data)
			return err
		}},
		// the baseline: decoded, and written again by socket.io's own encoder
		{"socketio-encoder", func() error {
			n, err := wire.DecodeNotification(payload)
			if err != nil {
				return err
			}
			d := n.Message.Data.(*wire.BroadcastData)
			_ = broadcastOpts(d.Opts)
			parser.NewEncoder().Encode(&parser.Packet{Type: parser.EVENT, Nsp: "/", Data: d.Packet.Data})
			return nil
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(payload)))
			for b.Loop() {
				if a.isOwn(payload) {
					b.Fatal("taken for our own")
				}
				if err := c.dispatch(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkKeptBroadcast measures what connection state recovery adds to delivering a
// broadcast from another server (its arguments as text, as they come off the wire): its
// offset, its entry in the namespace's log, and the log's lock. No socket is in the
// room, so that the writes to clients, the same either way, are not what is measured.
func BenchmarkKeptBroadcast(b *testing.B) {
	raw := `["chat",{"p":"` + strings.Repeat("x", 80) + `","s":1,"t":2}]`
	for _, on := range []bool{false, true} {
		b.Run(map[bool]string{false: "recovery=off", true: "recovery=on"}[on], func(b *testing.B) {
			var so *socket.ServerOptions
			if on {
				so = recoveryOptions()
			}
			n := newNodeWith(b, "A", newPool(b), testOptions(b), so)
			n.ready(b)
			a := n.io.Sockets().Adapter().(*Adapter)
			if (a.rec != nil) != on {
				b.Fatalf("recovery %v, want %v", a.rec != nil, on)
			}
			opts := &socket.BroadcastOptions{Rooms: types.NewSet[socket.Room]("room1"), Except: types.NewSet[socket.Room]()}
			b.ReportAllocs()
			for b.Loop() {
				a.localBroadcast(&parser.Packet{Type: parser.EVENT}, opts, raw, nil)
			}
		})
	}
}
