package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ceiling measures PostgreSQL's own NOTIFY throughput on this machine: 100-byte
// notifications from 4 connections, perTx per transaction, sent for about d, received by
// one listener. It returns the notifications per second from the first send to the last
// receipt.
func ceiling(ctx context.Context, dbURL, channel string, perTx int, d time.Duration) (float64, error) {
	lconn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return 0, err
	}
	defer lconn.Close(context.Background())
	if _, err := lconn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return 0, err
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	// The pool's four connections open before the clock starts: their connecting and
	// authenticating is no part of the ceiling.
	warm := make([]*pgxpool.Conn, 0, 4)
	for range min(4, int(pool.Config().MaxConns)) {
		c, err := pool.Acquire(ctx)
		if err != nil {
			return 0, err
		}
		warm = append(warm, c)
	}
	for _, c := range warm {
		c.Release()
	}

	var got atomic.Int64
	lctx, cancel := context.WithCancel(ctx)
	listenDone := make(chan struct{})
	var last atomic.Int64
	go func() {
		defer close(listenDone)
		for {
			if _, err := lconn.WaitForNotification(lctx); err != nil {
				return
			}
			got.Add(1)
			last.Store(time.Now().UnixNano())
		}
	}()
	defer func() { cancel(); <-listenDone }()

	payload := strings.Repeat("x", 100)
	var seq atomic.Int64
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				batch := &pgx.Batch{}
				for range perTx {
					// unique payloads: PostgreSQL merges equal ones within a transaction
					n := seq.Add(1)
					batch.Queue("SELECT pg_notify($1, $2)", channel, fmt.Sprint(n, payload)[:100])
				}
				if err := pool.SendBatch(ctx, batch).Close(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return 0, err
	default:
	}
	sent := seq.Load()
	for wait := time.Now().Add(30 * time.Second); got.Load() < sent; {
		if time.Now().After(wait) {
			return 0, fmt.Errorf("PostgreSQL ceiling: received %d of %d notifications", got.Load(), sent)
		}
		time.Sleep(time.Millisecond)
	}
	return float64(sent) / time.Duration(last.Load()-start.UnixNano()).Seconds(), nil
}

// notifyLatency measures PostgreSQL's own latency: one 100-byte notification per
// transaction, rate per second for d, from one connection to one listener, each stamped
// when it is sent and timed when the listener has it. No adapter can deliver between
// servers faster than this, at this rate on this machine. It returns p50 and p99 in
// milliseconds.
func notifyLatency(ctx context.Context, dbURL, channel string, rate int, d time.Duration) (p50, p99 float64, err error) {
	lconn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return 0, 0, err
	}
	defer lconn.Close(context.Background())
	if _, err := lconn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return 0, 0, err
	}
	sconn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return 0, 0, err
	}
	defer sconn.Close(context.Background())

	h := newHistogram()
	want := max(1, int(d.Seconds()*float64(rate)))
	received := make(chan error, 1)
	wctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	// The listener is read by this goroutine only: every return below waits for it to
	// stop before the deferred Close, which must not race with its read.
	go func() {
		for range want {
			n, err := lconn.WaitForNotification(wctx)
			if err != nil {
				received <- fmt.Errorf("PostgreSQL latency: %w", err)
				return
			}
			sent, _ := strconv.ParseInt(strings.TrimRight(n.Payload, "x"), 10, 64)
			h.add(nowUs() - sent)
		}
		received <- nil
	}()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for range want {
		<-tick.C
		payload := strconv.FormatInt(nowUs(), 10)
		payload += strings.Repeat("x", max(0, 100-len(payload)))
		if _, err := sconn.Exec(ctx, "SELECT pg_notify($1, $2)", channel, payload); err != nil {
			cancel()
			<-received
			return 0, 0, err
		}
	}
	if err := <-received; err != nil {
		return 0, 0, err
	}
	return h.quantile(0.5), h.quantile(0.99), nil
}
