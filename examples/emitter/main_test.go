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
// what the chat servers expect: a "message" event to the room. The channel is the
// default one, which other tests sharing DATABASE_URL (examples/chat's servers, their
// heartbeats) publish on too: the test waits for the emitter's own notification, with a
// text of its own, and ignores the others.
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
	text := "hello there " + pgtest.Name("m")
	if err := run(ctx, url, "lobby", "tester", text, 0); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var others []string
	for {
		n, err := conn.WaitForNotification(wctx)
		if err != nil {
			t.Fatalf("no notification from the emitter with text %q: %v (others seen: %q)", text, err, others)
		}
		var msg struct {
			UID  string
			Data struct {
				Packet struct{ Data []any }
				Opts   struct{ Rooms []string }
			}
		}
		if err := json.Unmarshal([]byte(n.Payload), &msg); err != nil {
			// Not every publisher on the channel need send JSON (the adapter's binary
			// messages): only the emitter's message matters.
			others = append(others, n.Payload)
			continue
		}
		d := msg.Data.Packet.Data
		if msg.UID != "emitter" || len(d) < 2 {
			others = append(others, n.Payload)
			continue
		}
		body, _ := d[1].(map[string]any)
		if body["text"] != text {
			others = append(others, n.Payload)
			continue
		}
		if len(d) != 2 || d[0] != "message" || body["from"] != "tester" ||
			len(msg.Data.Opts.Rooms) != 1 || msg.Data.Opts.Rooms[0] != "lobby" {
			t.Fatalf("published %s", n.Payload)
		}
		break
	}
	if err := run(ctx, "", "lobby", "x", "y", 0); err == nil {
		t.Fatal("no error without DATABASE_URL")
	}
}
