// Command cluster shows two Socket.IO servers acting as one through PostgreSQL.
//
//	go run ./examples/cluster
//
// It uses DATABASE_URL, or starts a temporary PostgreSQL from the local binaries (and
// removes it on exit) when DATABASE_URL is unset. It starts servers A and B on two ports,
// connects one client to each, and shows a message from A's client reaching B's client,
// a server-side question answered by the other server, and the sockets of the whole
// cluster seen from one server. Then it stops.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	eiotransports "github.com/zishang520/engine.io-client-go/transports"
	"github.com/zishang520/engine.io/v2/types"
	client "github.com/zishang520/socket.io-client-go/socket"
	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter"
	"github.com/socketio-pg/pgadapter/internal/pgtest"
)

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

// server is one Socket.IO server of the demo.
type server struct {
	name    string
	io      *socket.Server
	adapter *pgadapter.Builder
	pool    *pgxpool.Pool
	http    *http.Server
	url     string
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	url, stop, temporary, err := pgtest.Database(ctx)
	if errors.Is(err, pgtest.ErrNoPostgres) {
		return fmt.Errorf("%w\nor point DATABASE_URL at a running server, e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres", err)
	}
	if err != nil {
		return err
	}
	defer stop()
	if temporary {
		fmt.Println("DATABASE_URL is unset: started a temporary PostgreSQL (removed on exit) at", url)
	} else {
		fmt.Println("using DATABASE_URL")
	}

	a, err := startServer(ctx, "A", url)
	if err != nil {
		return err
	}
	defer a.close()
	b, err := startServer(ctx, "B", url)
	if err != nil {
		return err
	}
	defer b.close()
	fmt.Printf("server A on %s, server B on %s\n", a.url, b.url)

	// Wait until each server counts the other (they announce themselves on start).
	for a.io.Sockets().Adapter().ServerCount() < 2 || b.io.Sockets().Adapter().ServerCount() < 2 {
		if ctx.Err() != nil {
			return errors.New("the servers never saw each other")
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Println("both servers count 2 servers in the cluster")

	// A client on B listens; a client on A speaks; A broadcasts to the room.
	received := make(chan string, 1)
	listener, err := connect(b, "bob", func(c *client.Socket) {
		c.On("chat", func(args ...any) { received <- fmt.Sprintf("%v: %v", args[0], args[1]) })
	})
	if err != nil {
		return err
	}
	defer listener.Close()
	speaker, err := connect(a, "alice", nil)
	if err != nil {
		return err
	}
	defer speaker.Close()
	speaker.Emit("say", "hello from a client of server A")
	select {
	case msg := <-received:
		fmt.Println("bob, connected to server B, received:", msg)
	case <-time.After(15 * time.Second):
		return errors.New("the message never reached server B")
	}

	// A server-side question, answered by the other server.
	answer := make(chan []any, 1)
	a.io.ServerSideEmitWithAck("whoami")(func(args []any, err error) {
		if err != nil {
			log.Println("whoami:", err)
		}
		answer <- args
	})
	fmt.Println("server A asked the cluster who is there; answers:", <-answer)

	// The sockets of the whole cluster, seen from server A.
	sockets := make(chan []*socket.RemoteSocket, 1)
	a.io.FetchSockets()(func(list []*socket.RemoteSocket, err error) {
		if err != nil {
			log.Println("FetchSockets:", err)
		}
		sockets <- list
	})
	for _, s := range <-sockets {
		fmt.Printf("socket %s of %v, in rooms %v\n", s.Id(), s.Data(), s.Rooms().Keys())
	}
	fmt.Println("done")
	return nil
}

func startServer(ctx context.Context, name, url string) (*server, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, err
	}
	s := &server{name: name, pool: pool, io: socket.NewServer(nil, nil)}
	s.adapter = pgadapter.New(pool, &pgadapter.Options{
		ChannelPrefix: "pgadapter-example",
		Logger:        slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	s.io.SetAdapter(s.adapter)
	s.io.On("connection", func(args ...any) {
		c := args[0].(*socket.Socket)
		auth, _ := c.Handshake().Auth.(map[string]any)
		c.SetData(map[string]any{"user": auth["user"], "server": name})
		c.Join("lobby")
		// A client sends what it likes, and socket.io v2.5.0 does not recover a panic in
		// an event handler: an event without the arguments expected would end the process.
		c.On("ping", func(args ...any) {
			if ack, ok := lastAck(args); ok {
				ack([]any{"pong"}, nil)
			}
		})
		c.On("say", func(args ...any) {
			if len(args) > 0 {
				s.io.To("lobby").Emit("chat", auth["user"], args[0])
			}
		})
	})
	s.io.On("whoami", func(args ...any) {
		if ack, ok := lastAck(args); ok {
			ack([]any{"server " + name}, nil)
		}
	})
	// On failure, the adapter's goroutines (its LISTEN connection's retries among them)
	// stop with io.Close, before the pool they use is closed.
	fail := func(err error) (*server, error) {
		s.io.Close(nil)
		pool.Close()
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.adapter.Ready(rctx); err != nil {
		return fail(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	s.url = "http://" + l.Addr().String()
	mux := http.NewServeMux()
	mux.Handle("/socket.io/", s.io.ServeHandler(nil))
	s.http = &http.Server{Handler: mux}
	go s.http.Serve(l)
	return s, nil
}

// lastAck returns the acknowledgement callback of an event, which socket.io passes as
// its last argument when the sender asked for one.
func lastAck(args []any) (socket.Ack, bool) {
	if len(args) == 0 {
		return nil, false
	}
	ack, ok := args[len(args)-1].(socket.Ack)
	return ack, ok
}

func (s *server) close() {
	done := make(chan struct{})
	s.io.Close(func(error) { close(done) })
	<-done
	s.http.Close()
	s.pool.Close()
}

// connect opens a client to s as user and waits until it is connected and has made a
// round trip. A connection can fail at start-up for reasons outside pgadapter (README,
// "Defects"): socket.io-client-go v1.1.0 can lose the server's CONNECT reply;
// engine.io v2.5.0's WebSocket transport can drop the client's CONNECT; socket.io v2.5.0
// closes a connection whose first event arrives just after its CONNECT. Such a client
// is closed and the connection tried again.
func connect(s *server, user string, setup func(*client.Socket)) (*client.Socket, error) {
	for attempt := 0; attempt < 5; attempt++ {
		opts := client.DefaultOptions()
		opts.SetTransports(types.NewSet(eiotransports.WebSocket))
		opts.SetForceNew(true)
		opts.SetReconnection(false)
		opts.SetAutoConnect(false)
		opts.SetAuth(map[string]any{"user": user})
		c := client.NewManager(s.url, opts).Socket("/", opts)
		connected := make(chan struct{}, 1)
		c.On("connect", func(...any) { connected <- struct{}{} })
		if setup != nil {
			setup(c)
		}
		c.Connect()
		select {
		case <-connected:
		case <-time.After(3 * time.Second):
			c.Close()
			continue
		}
		pong := make(chan struct{}, 1)
		c.Timeout(3 * time.Second).EmitWithAck("ping")(func(_ []any, err error) {
			if err == nil {
				pong <- struct{}{}
			}
		})
		select {
		case <-pong:
			if c.Connected() {
				return c, nil
			}
		case <-time.After(3 * time.Second):
		}
		c.Close()
	}
	return nil, fmt.Errorf("%s could not connect to server %s", user, s.name)
}
