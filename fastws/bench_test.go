package fastws

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zishang520/engine.io/v2/transports"
	"github.com/zishang520/socket.io-go-parser/v2/parser"
	"github.com/zishang520/socket.io/v2/socket"
)

// BenchmarkBroadcast delivers b.N broadcasts of 100 bytes to 50 WebSocket clients of one
// server, and reports broadcasts/s delivered to every client: on engine.io's transport,
// on this one with the packet copied per client as socket.io does, and on this one with
// a Message shared by all. Broadcasts are written without a pre-encoded frame, which
// engine.io's transport mishandles.
//
//	go test -run=NONE -bench=Broadcast -benchtime=20000x ./fastws
func BenchmarkBroadcast(b *testing.B) {
	for _, v := range []struct {
		name   string
		fastws bool
		shared bool
	}{
		{"engine.io", false, false},
		{"fastws-copied", true, false},
		{"fastws-shared", true, true},
	} {
		b.Run(v.name, func(b *testing.B) {
			orig := transports.Transports()[transports.WEBSOCKET]
			if !v.fastws {
				transports.Transports()[transports.WEBSOCKET] = &transports.WebSocketBuilder{}
			}
			defer func() { transports.Transports()[transports.WEBSOCKET] = orig }()
			benchBroadcast(b, v.shared)
		})
	}
}

func benchBroadcast(b *testing.B, shared bool) {
	const clients = 50
	io, url := server(b)
	var received atomic.Int64
	var wg sync.WaitGroup
	conns := make([]*rawClient, clients)
	for i := range conns {
		conns[i] = dial(b, io, url)
	}
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if _, _, err := c.conn.ReadMessage(); err != nil {
					return
				}
				received.Add(1)
			}
		}()
	}
	var sockets []*socket.Socket
	io.Sockets().Sockets().Range(func(_ socket.SocketId, s *socket.Socket) bool {
		sockets = append(sockets, s)
		return true
	})
	opts := &socket.WriteOptions{}
	opts.PreEncoded = true
	pad := strings.Repeat("x", 80)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		encoded := io.Encoder().Encode(&parser.Packet{Type: parser.EVENT, Nsp: "/", Data: []any{"b", i, pad}})
		if shared {
			for j, e := range encoded {
				encoded[j] = Message(e)
			}
		}
		for _, s := range sockets {
			s.Client().WriteToEngine(encoded, opts)
		}
		// Bounded in flight, as a real server's clients would push back; a client that
		// stops reading fails the benchmark instead of stalling it.
		stalled := time.Now().Add(time.Minute)
		for int64(i)*clients-received.Load() > 2000*clients {
			if time.Now().After(stalled) {
				b.Fatalf("clients stopped reading: %d of %d received", received.Load(), int64(i)*clients)
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	deadline := time.Now().Add(time.Minute)
	for received.Load() < int64(b.N)*clients {
		if time.Now().After(deadline) {
			b.Fatalf("received %d of %d", received.Load(), int64(b.N)*clients)
		}
		time.Sleep(100 * time.Microsecond)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "broadcasts/s")
	b.StopTimer()
	for _, c := range conns {
		c.conn.Close()
	}
	wg.Wait()
}
