// Command chat is a chat application on two Socket.IO servers clustered through
// PostgreSQL with pgadapter.
//
//	go run ./examples/chat
//
// It uses DATABASE_URL, or starts a temporary PostgreSQL from the local binaries and
// removes it on exit. Open the two printed URLs in two browser windows: users connected
// to different servers chat in the same rooms and see who is online across the cluster.
package main

import (
	"context"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter"
	"github.com/socketio-pg/pgadapter/fastws"
	"github.com/socketio-pg/pgadapter/internal/pgtest"
)

// static holds the page, its script, and the socket.io browser client (v4.8.4, MIT), so
// that the page works offline.
//
//go:embed static
var static embed.FS

func main() {
	addrA := flag.String("a", "127.0.0.1:3000", "address of server A")
	addrB := flag.String("b", "127.0.0.1:3001", "address of server B")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, []string{*addrA, *addrB}, func(urls []string) {
		fmt.Println()
		fmt.Println("Chat servers running. Open each in a browser window:")
		fmt.Println("  server A:", urls[0])
		fmt.Println("  server B:", urls[1])
		fmt.Println("Press Ctrl-C to stop.")
	})
	if err != nil {
		log.Fatal(err)
	}
}

// run starts one chat server per address, calls ready with their URLs, and serves until
// ctx ends.
func run(ctx context.Context, addrs []string, ready func(urls []string)) error {
	// A faster WebSocket transport for engine.io v2.5.0, which also keeps every
	// broadcast of a burst (see the fastws package). Installed before any server starts.
	fastws.Install()
	url, stop, temporary, err := pgtest.Database(ctx)
	if errors.Is(err, pgtest.ErrNoPostgres) {
		return fmt.Errorf("%w\nor point DATABASE_URL at a running server, for example:\n  DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres go run ./examples/chat", err)
	}
	if err != nil {
		return fmt.Errorf("start a temporary PostgreSQL: %w", err)
	}
	defer stop()
	if temporary {
		fmt.Println("DATABASE_URL is unset: started a temporary PostgreSQL, removed on exit.")
		fmt.Printf("To post into the chat from another process:\n  DATABASE_URL='%s' go run ./examples/emitter -room lobby 'hello from the emitter'\n", url)
	}

	var urls []string
	for i, addr := range addrs {
		name := string(rune('A' + i))
		s, err := startServer(ctx, name, addr, url)
		if err != nil {
			return err
		}
		defer s.close()
		urls = append(urls, s.url)
	}
	ready(urls)
	<-ctx.Done()
	fmt.Println("stopping")
	return nil
}

type server struct {
	name string
	io   *socket.Server
	pool *pgxpool.Pool
	http *http.Server
	url  string
}

func startServer(ctx context.Context, name, addr, dbURL string) (*server, error) {
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	s := &server{name: name, pool: pool, io: socket.NewServer(nil, nil)}
	adapter := pgadapter.New(pool, &pgadapter.Options{
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	s.io.SetAdapter(adapter)
	s.io.On("connection", s.onConnection)
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// On failure, the adapter's goroutines (its LISTEN connection's retries among them)
	// stop with io.Close, before the pool they use is closed.
	fail := func(err error) (*server, error) {
		s.io.Close(nil)
		pool.Close()
		return nil, fmt.Errorf("server %s: %w", name, err)
	}
	if err := adapter.Ready(rctx); err != nil {
		return fail(err)
	}

	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fail(fmt.Errorf("%w (choose other addresses with -a and -b)", err))
	}
	s.url = "http://" + l.Addr().String() + "/"
	files, _ := fs.Sub(static, "static")
	mux := http.NewServeMux()
	mux.Handle("/socket.io/", s.io.ServeHandler(nil))
	mux.Handle("/static/", http.StripPrefix("/static/", http.FileServer(http.FS(files))))
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, files, "index.html")
	})
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go s.http.Serve(l)
	return s, nil
}

// onConnection admits a user into a room, tells them which server they are on, and
// relays their messages to the room, across the cluster.
func (s *server) onConnection(args ...any) {
	c := args[0].(*socket.Socket)
	auth, _ := c.Handshake().Auth.(map[string]any)
	name, _ := auth["name"].(string)
	room, _ := auth["room"].(string)
	name, room = strings.TrimSpace(name), strings.TrimSpace(room)
	if name == "" || room == "" || len(name) > 30 || len(room) > 30 {
		c.Disconnect(true)
		return
	}
	c.SetData(map[string]any{"name": name, "room": room, "server": s.name})
	c.Join(socket.Room(room))
	// The handlers before the welcome: a client may send as soon as it is welcomed (or as
	// soon as its CONNECT is answered, which comes before this runs), and socket.io drops
	// an event that has no handler yet.
	c.On("message", func(args ...any) {
		// A client sends what it likes, and socket.io v2.5.0 does not recover a panic in
		// an event handler: one without arguments would end the process.
		if len(args) == 0 {
			return
		}
		text, _ := args[0].(string)
		if text = strings.TrimSpace(text); text == "" || len(text) > 500 {
			return
		}
		s.io.To(socket.Room(room)).Emit("message", map[string]any{
			"from": name, "server": s.name, "text": text, "time": time.Now().Format("15:04:05"),
		})
	})
	c.On("disconnect", func(...any) { s.announce(room) })
	c.Emit("welcome", map[string]any{"server": s.name})
	s.announce(room)
}

// announce sends the room the list of its members on every server.
func (s *server) announce(room string) {
	s.io.In(socket.Room(room)).FetchSockets()(func(sockets []*socket.RemoteSocket, err error) {
		if err != nil {
			log.Printf("server %s: who is in %s: %v (answers so far: %d)", s.name, room, err, len(sockets))
		}
		users := make([]any, 0, len(sockets))
		for _, rs := range sockets {
			if d, ok := rs.Data().(map[string]any); ok {
				users = append(users, map[string]any{"name": d["name"], "server": d["server"]})
			}
		}
		s.io.To(socket.Room(room)).Emit("online", users)
	})
}

func (s *server) close() {
	done := make(chan struct{})
	s.io.Close(func(error) { close(done) })
	<-done
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.http.Shutdown(sctx)
	s.pool.Close()
}
