package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter"
	"github.com/socketio-pg/pgadapter/fastws"
)

// The server role: the bench command re-executes itself with -serve to run one Go
// Socket.IO server with pgadapter per process, so that each server's CPU and memory are
// its own. It speaks the line protocol of testdata/node/bench-server.js:
//
//	stdout: {"type":"ready","port":N}
//	        {"type":"stopped","count":C,"firstUs":F,"lastUs":L,"published":P,"transactions":T}
//	        (P and T: the messages and transactions the adapter published during the
//	        phase, Go servers with pgadapter only)
//	        {"type":"error","message":M}
//	stdin:  {"op":"start","size":S,"binary":B,"rate":R,"window":W}
//	        {"op":"credit","n":N}
//	        {"op":"stop"}
//	        {"op":"quit"}
//	        {"op":"trace","file":F}  (Go servers only: trace to F, or stop with no F)

// profileEnv names a directory where each Go server writes a CPU profile.
const profileEnv = "PGADAPTER_BENCH_PROFILE"

// traceEnv names a directory where each Go server writes an execution trace of each
// phase (go tool trace): where its goroutines wait, and for how long.
const traceEnv = "PGADAPTER_BENCH_TRACE"

// transportEnv set to "fastws" makes a Go server use the fastws WebSocket transport.
const transportEnv = "PGADAPTER_BENCH_TRANSPORT"

// inlineEnv set to "1" gives a Go server's adapter Options.InlineBinary.
const inlineEnv = "PGADAPTER_BENCH_INLINE_BINARY"

// syncCommitEnv set to "1" gives a Go server's adapter Options.SynchronousCommit.
const syncCommitEnv = "PGADAPTER_BENCH_SYNC_COMMIT"

// loggedTableEnv set to "1" gives a Go server's adapter Options.LoggedTable.
const loggedTableEnv = "PGADAPTER_BENCH_LOGGED_TABLE"

// adapterEnv set to "memory" makes a server use socket.io's own in-memory adapter, with
// no PostgreSQL: the "socket.io alone" reference (ADAPTER for the Node server).
const adapterEnv = "PGADAPTER_BENCH_ADAPTER"

// command is one line of the protocol's stdin.
type command struct {
	Op     string `json:"op"`
	Size   int    `json:"size"`
	Binary bool   `json:"binary"`
	Rate   int    `json:"rate"`
	Window int64  `json:"window"`
	N      int64  `json:"n"`
	Base   int64  `json:"base"` // the first broadcast's sequence number
	File   string `json:"file"`
}

// serverOut serializes the server's stdout lines.
type serverOut struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (o *serverOut) send(v any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.enc.Encode(v)
}

func serve(dbURL, prefix, table string) error {
	out := &serverOut{enc: json.NewEncoder(os.Stdout)}
	if dir := os.Getenv(profileEnv); dir != "" {
		// A CPU profile of the whole server, for finding where its time goes.
		f, err := os.CreateTemp(dir, "server-*.pprof")
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if os.Getenv(transportEnv) == "fastws" {
		fastws.Install()
	}
	io := socket.NewServer(nil, nil)
	// published returns how many messages and transactions the adapter has published
	// (nil for socket.io's in-memory adapter): each phase reports what it added, so that
	// the report tells how many messages shared a transaction.
	var published func() (messages, transactions int64)
	if os.Getenv(adapterEnv) == "memory" {
		// fastws writes the pre-encoded frames of socket.io's own in-memory adapter
		// correctly; engine.io's transport needs keepAll.
		if !fastws.Installed() {
			io.SetAdapter(keepAll{})
		}
	} else {
		ctx := context.Background()
		pool, err := pgxpool.New(ctx, dbURL)
		if err != nil {
			return err
		}
		defer pool.Close()
		b := pgadapter.New(pool, &pgadapter.Options{
			ChannelPrefix:     prefix,
			TableName:         table,
			InlineBinary:      os.Getenv(inlineEnv) == "1",
			SynchronousCommit: os.Getenv(syncCommitEnv) == "1",
			LoggedTable:       os.Getenv(loggedTableEnv) == "1",
			ErrorHandler: func(err error) {
				out.send(map[string]any{"type": "error", "message": err.Error()})
			},
		})
		defer b.Close(context.Background())
		io.SetAdapter(b)
		published = func() (messages, transactions int64) {
			st := b.Stats()
			for _, n := range st.Published {
				messages += n
			}
			return messages, st.Transactions
		}
		readyCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := b.Ready(readyCtx); err != nil {
			return err
		}
	}
	// A client the server disconnects on its own (a ping timeout, a write error) stops
	// receiving: say why, since the phase will count what it missed as lost.
	io.On("connection", func(args ...any) {
		s, ok := args[0].(*socket.Socket)
		if !ok {
			return
		}
		s.On("disconnect", func(a ...any) {
			reason := ""
			if len(a) > 0 {
				reason = fmt.Sprint(a[0])
			}
			if !clientEnded(reason) {
				out.send(map[string]any{"type": "disconnect", "message": fmt.Sprintf("client %s disconnected: %s", s.Id(), reason)})
			}
		})
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/socket.io/", io.ServeHandler(nil))
	httpServer := &http.Server{Handler: mux}
	go httpServer.Serve(l)
	defer httpServer.Close()
	defer io.Close(nil)
	out.send(map[string]any{"type": "ready", "port": l.Addr().(*net.TCPAddr).Port})

	var s *sender
	var messages0, transactions0 int64 // published before the phase
	var traced *os.File
	stopTrace := func() {
		if traced != nil {
			trace.Stop()
			traced.Close()
			traced = nil
		}
	}
	defer stopTrace()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var cmd command
		if err := json.Unmarshal(in.Bytes(), &cmd); err != nil {
			out.send(map[string]any{"type": "error", "message": "bad command: " + in.Text()})
			continue
		}
		switch cmd.Op {
		case "start":
			if s != nil {
				s.stop()
			}
			if published != nil {
				messages0, transactions0 = published()
			}
			s = startSender(io, cmd)
		case "credit":
			if s != nil {
				s.credit(cmd.N)
			}
		case "stop":
			stopped := map[string]any{"type": "stopped", "count": 0, "firstUs": 0, "lastUs": 0}
			if s != nil {
				s.stop()
				stopped["count"], stopped["firstUs"], stopped["lastUs"] = s.sent, s.first, s.last
				s = nil
			}
			if published != nil {
				m, t := published()
				stopped["published"], stopped["transactions"] = m-messages0, t-transactions0
			}
			out.send(stopped)
		case "trace":
			stopTrace()
			if cmd.File != "" {
				f, err := os.Create(cmd.File)
				if err == nil {
					if err = trace.Start(f); err != nil {
						f.Close()
					} else {
						traced = f
					}
				}
				if err != nil {
					out.send(map[string]any{"type": "error", "message": "trace: " + err.Error()})
				}
			}
		case "quit":
			if s != nil {
				s.stop()
			}
			return nil
		default:
			out.send(map[string]any{"type": "error", "message": "unknown op " + cmd.Op})
		}
	}
	return in.Err()
}

// sender emits broadcasts "b" to every client of the cluster: at a fixed rate, or as fast
// as the driver's credits allow (bounded in-flight).
type sender struct {
	io   *socket.Server
	cmd  command
	bin  []byte
	pad  string
	done chan struct{}

	mu      sync.Mutex
	cond    *sync.Cond
	credits int64
	running bool

	// Written by the emitting goroutine, read after done.
	sent, first, last int64
}

func startSender(io *socket.Server, cmd command) *sender {
	s := &sender{io: io, cmd: cmd, done: make(chan struct{}), credits: cmd.Window, running: true}
	s.cond = sync.NewCond(&s.mu)
	if cmd.Binary {
		s.bin = make([]byte, cmd.Size)
		for i := range s.bin {
			s.bin[i] = 7
		}
	} else {
		s.pad = strings.Repeat("x", cmd.Size)
	}
	if cmd.Rate > 0 {
		go s.paced()
	} else {
		go s.credited()
	}
	return s
}

func (s *sender) credit(n int64) {
	s.mu.Lock()
	s.credits += n
	s.mu.Unlock()
	s.cond.Signal()
}

func (s *sender) stop() {
	s.mu.Lock()
	s.running = false
	s.mu.Unlock()
	s.cond.Signal()
	<-s.done
}

func (s *sender) isRunning() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running
}

// emit sends broadcast number s.sent: {"p":"...","s":seq,"t":µs} of exactly cmd.Size
// bytes of JSON, or {"s":seq,"t":µs} and cmd.Size bytes of binary.
func (s *sender) emit() {
	seq := s.cmd.Base + s.sent
	s.sent++
	t := nowUs()
	if s.first == 0 {
		s.first = t
	}
	if s.cmd.Binary {
		s.io.Emit("b", map[string]any{"s": seq, "t": t}, s.bin)
	} else {
		fixed := 18 + len(strconv.FormatInt(seq, 10)) + len(strconv.FormatInt(t, 10))
		s.io.Emit("b", map[string]any{"s": seq, "t": t, "p": s.pad[:max(0, s.cmd.Size-fixed)]})
	}
	s.last = nowUs()
}

func (s *sender) credited() {
	defer close(s.done)
	for {
		s.mu.Lock()
		for s.running && s.credits == 0 {
			s.cond.Wait()
		}
		if !s.running {
			s.mu.Unlock()
			return
		}
		n := min(s.credits, 64)
		s.credits -= n
		s.mu.Unlock()
		for range n {
			s.emit()
		}
	}
}

func (s *sender) paced() {
	defer close(s.done)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	for range tick.C {
		if !s.isRunning() {
			return
		}
		due := int64(time.Since(start).Seconds() * float64(s.cmd.Rate))
		for s.sent < due {
			s.emit()
		}
	}
}

func serveMain(args []string) {
	if len(args) != 3 {
		fmt.Fprintln(os.Stderr, "pgadapter-bench -serve: want DATABASE_URL CHANNEL_PREFIX TABLE_NAME")
		os.Exit(2)
	}
	if err := serve(args[0], args[1], args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "pgadapter-bench server:", err)
		os.Exit(1)
	}
}

// clientEnded tells the disconnect reasons of a client that left, or of the server
// shutting down, from those of a server that dropped a client.
func clientEnded(reason string) bool {
	switch reason {
	case "transport close", "client namespace disconnect", "server shutting down":
		return true
	}
	return false
}
