// Command emitter posts into the chat of examples/chat from a separate process, through
// the emitter package: no Socket.IO server involved.
//
//	DATABASE_URL=... go run ./examples/emitter -room lobby 'hello from a worker'
//	DATABASE_URL=... go run ./examples/emitter -room lobby -every 5s   # a clock tick
//
// DATABASE_URL must name the database the chat servers use (examples/chat prints it when
// it starts a temporary PostgreSQL).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/socketio-pg/pgadapter/emitter"
)

func main() {
	room := flag.String("room", "lobby", "chat room to post to")
	every := flag.Duration("every", 0, "post the time at this interval until stopped (0: post the text once)")
	from := flag.String("from", "emitter", "name shown as the sender")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv("DATABASE_URL"), *room, *from, strings.Join(flag.Args(), " "), *every); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, dbURL, room, from, text string, every time.Duration) error {
	if dbURL == "" {
		return errors.New("DATABASE_URL is unset: set it to the database the chat servers use (go run ./examples/chat prints it)")
	}
	if text == "" && every == 0 {
		return errors.New("nothing to post: give a text, or -every 5s for a clock")
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	e, err := emitter.New(pool, nil)
	if err != nil {
		return err
	}
	chat := e.To(room)
	post := func(text string) error {
		err := chat.Emit(ctx, "message", map[string]any{
			"from": from, "server": "emitter", "text": text, "time": time.Now().Format("15:04:05"),
		})
		if err == nil {
			fmt.Printf("posted to %s: %s\n", room, text)
		}
		return err
	}
	if every == 0 {
		return post(text)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := post("the time is " + time.Now().Format("15:04:05")); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
