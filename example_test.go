package pgadapter_test

import (
	"context"
	"log"
	"net/http"
	"os"

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

	http.Handle("/socket.io/", io.ServeHandler(nil))
	log.Fatal(http.ListenAndServe(":3000", nil))
}

// Waiting for the adapter before serving, so that nothing the other servers publish from
// then on is missed.
func ExampleBuilder_Ready() {
	ctx := context.Background()
	pool, _ := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	adapter := pgadapter.New(pool, nil)
	io := socket.NewServer(nil, nil)
	io.SetAdapter(adapter)
	if err := adapter.Ready(ctx); err != nil {
		log.Fatal(err)
	}
}
