package emitter_test

import (
	"context"
	"log"
	"net/http"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/socketio-pg/pgadapter/emitter"
)

// Emitting to a room of the cluster from an HTTP handler of a service that runs no
// Socket.IO server.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	e, err := emitter.New(pool, nil) // the servers' defaults: prefix "socket.io", table "socket_io_attachments"
	if err != nil {
		log.Fatal(err)
	}
	orders := e.Of("/orders") // safe to share: every call returns a new Emitter

	http.HandleFunc("/orders/shipped", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		if err := orders.To("order:"+id).Emit(r.Context(), "shipped", map[string]any{"id": id}); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	log.Fatal(http.ListenAndServe(":8080", nil))
}

// Emitting inside a transaction: the clients hear of the change when it commits, and
// never if it rolls back.
func ExampleEmitter_Emit_transaction() {
	ctx := context.Background()
	pool, _ := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	defer pool.Close()

	tx, err := pool.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback(ctx) // no-op after Commit

	if _, err := tx.Exec(ctx, "UPDATE orders SET status = 'paid' WHERE id = $1", 42); err != nil {
		log.Fatal(err)
	}
	e, _ := emitter.New(tx, nil)
	if err := e.To("order:42").Emit(ctx, "paid", 42); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil { // the event is published here
		log.Fatal(err)
	}
}
