package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	scenarioBetween = "between servers"
	scenarioClients = "to clients"
	// scenarioAlone is one server with socket.io's in-memory adapter and no PostgreSQL:
	// what the Socket.IO library itself costs to deliver to its clients, which no
	// adapter can go below.
	scenarioAlone = "socket.io alone"
)

// cluster is the servers of one implementation and the clients connected to them.
type cluster struct {
	impl    string
	poller  *poller
	procs   []*proc
	clients [][]*client // per server
	phases  int64       // phases run, which number their broadcasts apart (see phaseSpan)
}

// phase is one measurement on a cluster.
type phase struct {
	Scenario string
	Payload  payload
	Rate     int   // broadcasts per second; 0 for saturation
	Window   int64 // in flight at most, in saturation
	Duration time.Duration
	Drain    time.Duration
	Clients  int // set by run
}

func (p phase) kind() string {
	if p.Rate > 0 {
		return "paced"
	}
	return "saturation"
}

// connect brings every server to n clients.
func (cl *cluster) connect(n int) error {
	for i, p := range cl.procs {
		addr := "127.0.0.1:" + strconv.Itoa(p.port)
		var mu sync.Mutex
		var firstErr error
		var wg sync.WaitGroup
		for range n - len(cl.clients[i]) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// socket.io v2.5.0 servers now and then never answer a namespace
				// connect under a burst of them; such a client is closed and dialled again.
				var c *client
				var err error
				for range 3 {
					if c, err = dial(cl.poller, addr, 5*time.Second); err == nil {
						break
					}
				}
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					firstErr = err
					return
				}
				cl.clients[i] = append(cl.clients[i], c)
			}()
		}
		wg.Wait()
		if firstErr != nil {
			return fmt.Errorf("connecting clients to %s: %w", p.name, firstErr)
		}
	}
	return nil
}

// dropEnded closes and forgets the clients that have ended, and reports how many, and
// how many clients each server had.
func (cl *cluster) dropEnded() (ended, per int) {
	for i, cs := range cl.clients {
		per = max(per, len(cs))
		kept := cs[:0]
		for _, c := range cs {
			select {
			case <-c.closed:
				c.close()
				ended++
			default:
				kept = append(kept, c)
			}
		}
		clear(cs[len(kept):])
		cl.clients[i] = kept
	}
	return ended, per
}

func (cl *cluster) close() {
	for _, cs := range cl.clients {
		for _, c := range cs {
			c.close()
		}
	}
	for _, p := range cl.procs {
		p.quit()
	}
	if cl.poller != nil {
		cl.poller.close()
	}
}

// trace asks each Go server for an execution trace of ph, in the directory traceEnv
// names, if any; a zero phase stops the traces.
func (cl *cluster) trace(ph phase) error {
	dir := os.Getenv(traceEnv)
	if dir == "" || !strings.HasPrefix(cl.impl, "go") {
		return nil
	}
	for i, p := range cl.procs {
		file := ""
		if ph.Scenario != "" {
			file = filepath.Join(dir, fmt.Sprintf("%s-%d-%s-%s-%s.trace", cl.impl, i,
				strings.ReplaceAll(ph.Scenario, " ", "-"), ph.Payload.Name, ph.kind()))
		}
		if err := p.send(map[string]any{"op": "trace", "file": file}); err != nil {
			return err
		}
	}
	return nil
}

// run measures one phase: server 0 emits, every client of every server receives.
// Delivery and latency are measured on the clients of the other servers, or, for a
// single server, on its own.
func (cl *cluster) run(ph phase) (*result, error) {
	ph.Clients = len(cl.clients[0])
	cl.phases++
	base := cl.phases * phaseSpan
	var all, remote, own []*client
	// A paced phase emits about Rate·Duration broadcasts; twice that bounds the record.
	var sp *spread
	if ph.Rate > 0 {
		sp = newSpread(2*int(float64(ph.Rate)*ph.Duration.Seconds()) + 16)
	}
	for i, cs := range cl.clients {
		for _, c := range cs {
			c.reset(base)
			c.spread.Store(nil)
			if sp != nil && (i > 0 || len(cl.clients) == 1) {
				c.spread.Store(sp)
			}
			all = append(all, c)
			if i > 0 || len(cl.clients) == 1 {
				remote = append(remote, c)
			} else {
				own = append(own, c)
			}
		}
	}
	for _, p := range cl.procs {
		p.takeErrors()
	}
	res := &result{Impl: cl.impl, Scenario: ph.Scenario, Payload: ph.Payload.Name, Phase: ph.kind(),
		Servers: len(cl.procs), ClientsPerServer: ph.Clients, Rate: ph.Rate}
	if ph.Rate == 0 {
		res.Window = ph.Window
	}
	peakReset := true
	cpu0 := make([]time.Duration, len(cl.procs))
	for i, p := range cl.procs {
		peakReset = p.resetPeak() && peakReset
		var err error
		if cpu0[i], err = p.cpu(); err != nil {
			return nil, err
		}
	}
	self0 := selfCPU()
	if err := cl.trace(ph); err != nil {
		return nil, err
	}
	sender := cl.procs[0]
	start := time.Now()
	if err := sender.send(map[string]any{"op": "start", "size": ph.Payload.Size, "binary": ph.Payload.Binary,
		"rate": ph.Rate, "window": ph.Window, "base": base}); err != nil {
		return nil, err
	}

	// minRemote is how many broadcasts every client of the other servers has received.
	minRemote := func() int64 {
		m := int64(-1)
		for _, c := range remote {
			if n := c.count.Load(); m < 0 || n < m {
				m = n
			}
		}
		return m
	}
	var credited, delivered int64
	var deliveredAt time.Time
	progress := func() {
		if m := minRemote(); m > delivered {
			delivered, deliveredAt = m, time.Now()
		}
	}
	for time.Since(start) < ph.Duration {
		time.Sleep(500 * time.Microsecond)
		progress()
		if ph.Rate == 0 && delivered > credited {
			if err := sender.send(map[string]any{"op": "credit", "n": delivered - credited}); err != nil {
				return nil, err
			}
			credited = delivered
		}
	}
	st, err := sender.stop()
	if err != nil {
		return nil, err
	}
	// Wait for what is in flight, as long as it progresses.
	sum := func() int64 {
		var n int64
		for _, c := range all {
			n += c.count.Load()
		}
		return n
	}
	want := st.Count * int64(len(all))
	got, lastSum, lastMove := sum(), int64(-1), time.Now()
	allAt := time.Now()
	for got < want {
		if got != lastSum {
			lastSum, lastMove, allAt = got, time.Now(), time.Now()
		}
		if time.Since(lastMove) > ph.Drain {
			break
		}
		time.Sleep(500 * time.Microsecond)
		progress()
		got = sum()
	}
	if got != lastSum {
		allAt = time.Now()
	}
	progress()
	if err := cl.trace(phase{}); err != nil {
		return nil, err
	}

	res.Emitted = st.Count
	if st.Transactions > 0 {
		res.MessagesPerTransaction = float64(st.Published) / float64(st.Transactions)
	}
	if st.LastUs > st.FirstUs {
		res.AcceptedPerSec = float64(st.Count) / (float64(st.LastUs-st.FirstUs) / 1e6)
	}
	res.Delivered = delivered
	if delivered > 0 {
		res.DeliveredPerSec = float64(delivered) / deliveredAt.Sub(start).Seconds()
		res.DeliveriesPerSec = float64(got) / allAt.Sub(start).Seconds()
	}
	res.Lost = want - got // got counts each broadcast once per client: a duplicate hides no loss
	h := newHistogram()
	for _, c := range remote {
		h.merge(c.rec.Load())
		res.Reordered += c.reordered.Load()
	}
	for _, c := range all {
		res.Duplicates += c.dups.Load()
		res.Stray += c.stray.Load()
	}
	res.P50Ms, res.P99Ms, res.MaxMs = h.quantile(0.5), h.quantile(0.99), float64(h.max.Load())/1000
	res.NegativeLatency = h.negative.Load()
	if sp != nil {
		first, last := sp.histograms()
		res.FirstP50Ms, res.FirstP99Ms = first.quantile(0.5), first.quantile(0.99)
		res.LastP50Ms, res.LastP99Ms = last.quantile(0.5), last.quantile(0.99)
		if len(own) > 0 {
			oh := newHistogram()
			for _, c := range own {
				oh.merge(c.rec.Load())
			}
			res.OwnP50Ms, res.OwnP99Ms = oh.quantile(0.5), oh.quantile(0.99)
		}
	}
	res.Seconds = time.Since(start).Seconds()
	for i, p := range cl.procs {
		cpu1, err := p.cpu()
		if err != nil {
			return nil, err
		}
		ps := procStats{Name: p.name, CPUSeconds: (cpu1 - cpu0[i]).Seconds()}
		if delivered > 0 {
			ps.CPUPer1000 = ps.CPUSeconds / (float64(delivered) / 1000)
		}
		if peakReset {
			ps.PeakRSSMB = float64(p.peakRSS()) / (1 << 20)
		}
		ps.Errors = p.takeErrors()
		res.Procs = append(res.Procs, ps)
	}
	res.LoadGenCPUSeconds = (selfCPU() - self0).Seconds()
	// A client that ended receives nothing more: say why, for this phase and those
	// after it, rather than leave only a count of lost receipts.
	for i, cs := range cl.clients {
		for j, c := range cs {
			select {
			case <-c.closed:
				res.ClientErrors = append(res.ClientErrors, fmt.Sprintf("client %d of %s ended: %v", j, cl.procs[i].name, c.err))
			default:
			}
		}
	}
	for _, p := range cl.procs {
		for _, d := range p.takeDisconnects() {
			res.ClientErrors = append(res.ClientErrors, p.name+": "+d)
		}
	}
	return res, nil
}
