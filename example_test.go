package pgadapter_test

import (
	"context"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter"
)

// A Socket.IO server clustered through PostgreSQL: every server started this way, against
// the same database, acts as one.
func ExampleNew() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	io := socket.NewServer(nil, nil)
	io.SetAdapter(pgadapter.New(pool, &pgadapter.Options{
		ErrorHandler: func(err error) { log.Println("cluster:", err) },
	}))
	io.On("connection", func(args ...any) {
		client := args[0].(*socket.Socket)
		client.Join("lobby")
		// Reaches the "lobby" clients of every server of the cluster.
		io.To("lobby").Emit("joined", string(client.Id()))
	})

	defer io.Close(nil) // before the pool: the adapter's goroutines use it

	http.Handle("/socket.io/", io.ServeHandler(nil))
	if err := http.ListenAndServe(":3000", nil); err != nil {
		log.Println(err)
	}
}

// Waiting for the adapter before serving, so that nothing the other servers publish from
// then on is missed. The listener retries a connection that fails until it is closed, so
// the wait is bounded; its error then names the last failure too (a wrong password).
func ExampleBuilder_Ready() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	adapter := pgadapter.New(pool, nil)
	io := socket.NewServer(nil, nil)
	io.SetAdapter(adapter)
	defer io.Close(nil) // before the pool: the adapter's goroutines use it

	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := adapter.Ready(rctx); err != nil {
		log.Println(err)
		return
	}
	// Serve, as in the example of New.
}

// Connection state recovery: a client whose connection drops gets its socket and the
// broadcasts it missed back when it returns to the same server within two minutes. The
// adapter goes in socket.io's options: NewServer would otherwise first build socket.io's
// own session adapter, which panics on Go 1.26 (see the README's defects).
func ExampleNew_connectionStateRecovery() {
	pool, err := pgxpool.New(context.Background(), os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	csr := &socket.ConnectionStateRecovery{}
	csr.SetSkipMiddlewares(true) // socket.io's default, which it sets only without an adapter in its options
	opts := socket.DefaultServerOptions()
	opts.SetConnectionStateRecovery(csr)
	opts.SetAdapter(pgadapter.New(pool, nil))
	io := socket.NewServer(nil, opts)
	io.On("connection", func(args ...any) {
		client := args[0].(*socket.Socket)
		if !client.Recovered() {
			client.Join("lobby") // a new session: a recovered one has its rooms back
		}
	})
	defer io.Close(nil)

	http.Handle("/socket.io/", io.ServeHandler(nil))
	if err := http.ListenAndServe(":3000", nil); err != nil {
		log.Println(err)
	}
}
