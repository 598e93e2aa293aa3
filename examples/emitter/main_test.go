package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/socketio-pg/pgadapter/internal/pgtest"
)

// TestRun posts once and checks, with LISTEN on the chat's channel, that the message is
// what the chat servers expect: a "message" event to the room.
func TestRun(t *testing.T) {
	ctx := context.Background()
	url, stop, _, err := pgtest.Database(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `LISTEN "socket.io#/"`); err != nil {
		t.Fatal(err)
	}
	if err := run(ctx, url, "lobby", "tester", "hello there", 0); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := conn.WaitForNotification(wctx)
	if err != nil {
		t.Fatal(err)
	}
	var msg struct {
		Data struct {
			Packet struct{ Data []any }
			Opts   struct{ Rooms []string }
		}
	}
	if err := json.Unmarshal([]byte(n.Payload), &msg); err != nil {
		t.Fatal(err)
	}
	body, _ := msg.Data.Packet.Data[1].(map[string]any)
	if msg.Data.Packet.Data[0] != "message" || body["text"] != "hello there" || body["from"] != "tester" ||
		len(msg.Data.Opts.Rooms) != 1 || msg.Data.Opts.Rooms[0] != "lobby" {
		t.Fatalf("published %s", n.Payload)
	}
	if err := run(ctx, "", "lobby", "x", "y", 0); err == nil {
		t.Fatal("no error without DATABASE_URL")
	}
}
