package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// report is everything one run measured; it is also the JSON output.
type report struct {
	Started time.Time `json:"started"`
	Machine machine   `json:"machine"`
	Config  config    `json:"config"`
	Ceiling struct {
		OnePerTx      float64 `json:"onePerTxPerSec"`
		ManyPerTx     float64 `json:"manyPerTxPerSec"`
		ManyPerTxSize int     `json:"manyPerTxSize"`
		// PostgreSQL's own latency at the paced rate: one notification per transaction,
		// one sender, one listener.
		LatencyP50Ms float64 `json:"pacedLatencyP50ms"`
		LatencyP99Ms float64 `json:"pacedLatencyP99ms"`
	} `json:"postgresCeiling"`
	// Databases says whether each implementation's cluster had a database of its own
	// ("one per implementation") or they shared one ("shared"): see implDatabases.
	Databases string    `json:"databases,omitempty"`
	Results   []*result `json:"results"`
	Checks    []check   `json:"checks"`
	Bounds    []bound   `json:"bounds,omitempty"`
}

type machine struct {
	CPU        string  `json:"cpu"`
	CPUs       int     `json:"cpus"`
	MemoryGB   float64 `json:"memoryGB"`
	OS         string  `json:"os"`
	GoVersion  string  `json:"go"`
	Node       string  `json:"node,omitempty"`
	PostgreSQL string  `json:"postgresql"`
	// Durability is the server's fsync and synchronous_commit, which decide whether a
	// commit that wrote WAL (an attachment row's) waits for a disk flush.
	Durability string `json:"postgresqlDurability,omitempty"`
	TLS        *bool  `json:"postgresqlTLS,omitempty"` // whether the connections to PostgreSQL use TLS (nil: not recorded)
}

// result is one phase on one implementation.
type result struct {
	Impl             string `json:"impl"`
	Scenario         string `json:"scenario"`
	Payload          string `json:"payload"`
	Phase            string `json:"phase"`
	Servers          int    `json:"servers"`
	ClientsPerServer int    `json:"clientsPerServer"`
	Rate             int    `json:"rate,omitempty"`
	Window           int64  `json:"window,omitempty"`

	Emitted          int64   `json:"emitted"`
	AcceptedPerSec   float64 `json:"acceptedPerSec"`            // broadcasts the sender's emit accepted
	Delivered        int64   `json:"delivered"`                 // broadcasts every client of the other servers received
	DeliveredPerSec  float64 `json:"deliveredPerSec"`           // of those
	DeliveriesPerSec float64 `json:"deliveriesPerSec"`          // receipts by clients, all servers
	Lost             int64   `json:"lost"`                      // receipts missing after the drain
	Reordered        int64   `json:"reordered"`                 // receipts after a later broadcast, other servers
	Duplicates       int64   `json:"duplicates"`                // broadcasts a client received twice or more (the extra receipts)
	Stray            int64   `json:"stray"`                     // receipts of another phase's broadcasts (late), or without a number
	NegativeLatency  int64   `json:"negativeLatency,omitempty"` // receipts stamped before their emit: the clocks disagree
	P50Ms            float64 `json:"p50ms"`                     // emit on server 0 to receipt on the other servers' clients
	P99Ms            float64 `json:"p99ms"`
	MaxMs            float64 `json:"maxMs"`
	// Paced phases: each broadcast's first and last receipt among the other servers'
	// clients (see spread): the first is the way to the receiving server, the gap to the
	// last the fan-out to its clients.
	FirstP50Ms float64 `json:"firstP50ms,omitempty"`
	FirstP99Ms float64 `json:"firstP99ms,omitempty"`
	LastP50Ms  float64 `json:"lastP50ms,omitempty"`
	LastP99Ms  float64 `json:"lastP99ms,omitempty"`
	// Paced phases with more than one server: receipt on the sender's own clients. Node's
	// adapter writes to them only once its NOTIFY has committed; pgadapter at once, beside
	// the NOTIFY, whose way to the other servers then shares the machine with that
	// fan-out.
	OwnP50Ms float64 `json:"ownP50ms,omitempty"`
	OwnP99Ms float64 `json:"ownP99ms,omitempty"`
	Seconds  float64 `json:"seconds"`
	// The sending server's messages per publishing transaction during the phase (Go
	// servers): how well its publisher batched, where the saturated rate comes from.
	MessagesPerTransaction float64 `json:"messagesPerTransaction,omitempty"`

	Procs             []procStats `json:"servers_"`
	LoadGenCPUSeconds float64     `json:"loadGeneratorCPUSeconds"`
	ClientErrors      []string    `json:"clientErrors,omitempty"` // clients that had ended by the phase's end, and why
}

type procStats struct {
	Name       string   `json:"name"`
	CPUSeconds float64  `json:"cpuSeconds"`
	CPUPer1000 float64  `json:"cpuSecondsPer1000"` // per 1000 broadcasts delivered
	PeakRSSMB  float64  `json:"peakRSSMB"`
	Errors     []string `json:"errors,omitempty"`
}

// check is one of the targets the run is judged by.
type check struct {
	Name   string  `json:"name"`
	Ratio  float64 `json:"ratio"` // or, with Count, a number of receipts
	Target string  `json:"target"`
	Pass   bool    `json:"pass"`
	Count  bool    `json:"count,omitempty"`
}

// intact reports whether every client received every broadcast of phase x once and, on
// the servers that did not send it, in the order sent.
func intact(x *result) bool { return x.Lost == 0 && x.Duplicates == 0 && x.Reordered == 0 }

// bound compares socket.io alone (one server, in-memory adapter) with the clusters: the
// Socket.IO library's own cost, which no adapter removes, bounds what an adapter's
// server can reach.
type bound struct {
	Name  string  `json:"name"`
	Ratio float64 `json:"ratio"`
	Note  string  `json:"note"`
}

// goImpls are the Go variants measured, with their names in the report.
var goImpls = []struct{ impl, label string }{
	{"go", "pgadapter"},
	{"go-fastws", "pgadapter + fastws"},
}

// implLabel names impl in the report.
func implLabel(impl string) string {
	for _, g := range goImpls {
		if g.impl == impl {
			return g.label
		}
	}
	return "Node adapter"
}

// bounds computes the comparisons with socket.io alone that the run allows.
func bounds(r *report) []bound {
	var bs []bound
	// PostgreSQL's own latency bounds any adapter's: where its p99 alone is above a
	// third of the Node adapter's, the latency target is out of reach on this machine.
	for _, sc := range []string{scenarioBetween, scenarioClients} {
		for _, p := range r.Config.Payloads {
			if np := r.find("node", sc, p.Name, "paced"); np != nil && np.P99Ms > 0 && r.Ceiling.LatencyP99Ms > 0 {
				bs = append(bs, bound{fmt.Sprintf("%s, %s paced: p99 latency, PostgreSQL NOTIFY alone / Node adapter", sc, p.Name),
					r.Ceiling.LatencyP99Ms / np.P99Ms, "what PostgreSQL itself costs, against the ≤ 0.33 target"})
			}
		}
	}
	for _, p := range r.Config.Payloads {
		na := r.find("node", scenarioAlone, p.Name, "saturation")
		nc := r.find("node", scenarioClients, p.Name, "saturation")
		for _, g := range goImpls {
			ga := r.find(g.impl, scenarioAlone, p.Name, "saturation")
			gc := r.find(g.impl, scenarioClients, p.Name, "saturation")
			if ga == nil {
				continue
			}
			lib := "Go socket.io"
			if g.impl == "go-fastws" {
				lib = "Go socket.io + fastws"
			}
			if na != nil && na.DeliveredPerSec > 0 {
				bs = append(bs, bound{fmt.Sprintf("socket.io alone, %s: broadcasts/s, %s / Node", p.Name, lib),
					ga.DeliveredPerSec / na.DeliveredPerSec, "the libraries compared, without adapters"})
			}
			if na != nil && len(na.Procs) > 0 && na.Procs[0].CPUPer1000 > 0 {
				bs = append(bs, bound{fmt.Sprintf("socket.io alone, %s: CPU per 1000 broadcasts, %s / Node", p.Name, lib),
					ga.Procs[0].CPUPer1000 / na.Procs[0].CPUPer1000, "the libraries compared, without adapters"})
			}
			if nc != nil && len(nc.Procs) > 1 && nc.Procs[1].CPUPer1000 > 0 {
				bs = append(bs, bound{fmt.Sprintf("%s: CPU per 1000 broadcasts, %s alone / Node adapter's receiving server", p.Name, lib),
					ga.Procs[0].CPUPer1000 / nc.Procs[1].CPUPer1000, "the library's own cost, emit and delivery, against the ≤ 0.2 target"})
			}
			if gc != nil && len(gc.Procs) > 1 && ga.Procs[0].CPUPer1000 > 0 {
				bs = append(bs, bound{fmt.Sprintf("%s: CPU per 1000 broadcasts, %s's receiving server / %s alone", p.Name, g.label, lib),
					gc.Procs[1].CPUPer1000 / ga.Procs[0].CPUPer1000, "what receiving through PostgreSQL adds to delivering"})
			}
		}
	}
	return bs
}

func (r *report) find(impl, scenario, payload, phase string) *result {
	for _, x := range r.Results {
		if x.Impl == impl && x.Scenario == scenario && x.Payload == payload && x.Phase == phase {
			return x
		}
	}
	return nil
}

// checks compares pgadapter with its references, as the project's targets state them,
// for each Go variant measured.
func checks(r *report) []check {
	var cs []check
	for _, gi := range goImpls {
		var bad, phases int64
		for _, x := range r.Results {
			if x.Impl == gi.impl {
				bad += x.Lost + x.Duplicates + x.Reordered
				phases++
			}
		}
		if phases > 0 {
			cs = append(cs, check{Name: fmt.Sprintf("%s, all %d phases: receipts lost, repeated or out of order", gi.label, phases),
				Ratio: float64(bad), Target: "0", Pass: bad == 0, Count: true})
		}
		if g := r.find(gi.impl, scenarioBetween, "json-100B", "saturation"); g != nil && r.Ceiling.OnePerTx > 0 {
			ratio := g.DeliveredPerSec / r.Ceiling.OnePerTx
			cs = append(cs, check{Name: "between servers, 100B: " + gi.label + " / PostgreSQL 1-per-tx ceiling", Ratio: ratio, Target: "> 3, every one received once, in order",
				Pass: ratio > 3 && intact(g)})
		}
		for _, sc := range []string{scenarioBetween, scenarioClients} {
			for _, p := range r.Config.Payloads {
				cs = append(cs, checksAgainstNode(r, gi.impl, gi.label, sc, p.Name)...)
			}
		}
	}
	return cs
}

// checksAgainstNode compares impl with the Node adapter in one scenario and payload:
// broadcasts per second (at least 3× Node's for 100 bytes, 5× for the others), CPU per
// broadcast with clients (at most a fifth), and paced p99 latency (at most a third).
func checksAgainstNode(r *report, impl, label, scenario, payload string) []check {
	var cs []check
	g := r.find(impl, scenario, payload, "saturation")
	n := r.find("node", scenario, payload, "saturation")
	if g != nil && n != nil && n.DeliveredPerSec > 0 {
		want := 5.0
		if payload == "json-100B" {
			want = 3
		}
		ratio := g.DeliveredPerSec / n.DeliveredPerSec
		cs = append(cs, check{Name: fmt.Sprintf("%s, %d clients/server, %s: broadcasts/s, %s / Node", scenario, g.ClientsPerServer, payload, label),
			Ratio: ratio, Target: fmt.Sprintf("≥ %g, every one received once, in order", want), Pass: ratio >= want && intact(g)})
		if payload == "json-100B" && scenario == scenarioClients {
			for i := range g.Procs {
				if i < len(n.Procs) && n.Procs[i].CPUPer1000 > 0 {
					ratio := g.Procs[i].CPUPer1000 / n.Procs[i].CPUPer1000
					cs = append(cs, check{Name: fmt.Sprintf("%s, %d clients/server, %s: CPU per 1000 broadcasts, server %d, %s / Node", scenario, g.ClientsPerServer, payload, i, label),
						Ratio: ratio, Target: "≤ 0.2", Pass: ratio <= 0.2})
				}
			}
		}
	}
	gp := r.find(impl, scenario, payload, "paced")
	np := r.find("node", scenario, payload, "paced")
	if gp != nil && np != nil && np.P99Ms > 0 {
		ratio := gp.P99Ms / np.P99Ms
		cs = append(cs, check{Name: fmt.Sprintf("%s, %d clients/server, %s paced at %d/s: p99 latency, %s / Node", scenario, gp.ClientsPerServer, payload, gp.Rate, label),
			Ratio: ratio, Target: "≤ 0.33, every one received once, in order", Pass: ratio <= 1.0/3 && intact(gp)})
	}
	return cs
}

func printTable(w io.Writer, r *report) {
	m := r.Machine
	fmt.Fprintf(w, "pgadapter-bench, %s\n", r.Started.Format(time.RFC3339))
	fmt.Fprintf(w, "machine: %d CPUs (%s), %.0f GB; %s %s; PostgreSQL %s; Node.js %s\n", m.CPUs, m.CPU, m.MemoryGB, m.GoVersion, m.OS, m.postgres(), orNone(m.Node))
	c := r.Config
	goServers := "GOGC default"
	if c.GOGC > 0 {
		goServers = "GOGC " + strconv.Itoa(c.GOGC)
	}
	if c.GOMAXPROCS > 0 {
		goServers += ", GOMAXPROCS " + strconv.Itoa(c.GOMAXPROCS)
	}
	if c.InlineBinary {
		goServers += ", InlineBinary"
	}
	if c.SyncCommit {
		goServers += ", SynchronousCommit"
	}
	if c.LoggedTable {
		goServers += ", LoggedTable"
	}
	fmt.Fprintf(w, "cluster: %d servers, server 0 emits; %d clients per server (%d between servers); phases of %gs; window %d; paced %d/s; Go servers' %s\n",
		c.Servers, c.Clients, c.BetweenClients, c.PhaseSeconds, c.Window, c.Rate, goServers)
	if r.Databases != "" {
		fmt.Fprintf(w, "every implementation's cluster runs at once, taking turns phase by phase; databases: %s\n", r.Databases)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "PostgreSQL's NOTIFY ceiling: %s/s one per transaction, %s/s %d per transaction (4 senders, 1 listener)\n",
		num(r.Ceiling.OnePerTx), num(r.Ceiling.ManyPerTx), r.Ceiling.ManyPerTxSize)
	if r.Ceiling.LatencyP99Ms > 0 {
		fmt.Fprintf(w, "PostgreSQL's NOTIFY latency at %d/s, one per transaction: p50 %.2f ms, p99 %.2f ms (1 sender, 1 listener)\n",
			c.Rate, r.Ceiling.LatencyP50Ms, r.Ceiling.LatencyP99Ms)
	}
	fmt.Fprintln(w)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "impl\tscenario\tpayload\tphase\tclients\tbcast/s accepted\tbcast/s delivered\tdeliveries/s\tp50 ms\tp99 ms\tCPU s/1000 per server\tpeak RSS MB\tmsgs/tx\tlost\trepeated\treordered\tlate\t")
	for _, x := range r.Results {
		var cpu, rss []string
		for _, p := range x.Procs {
			cpu = append(cpu, fmt.Sprintf("%.3f", p.CPUPer1000))
			rss = append(rss, fmt.Sprintf("%.0f", p.PeakRSSMB))
		}
		phase := x.Phase
		if x.Rate > 0 {
			phase = fmt.Sprintf("paced %d/s", x.Rate)
		}
		perTx := "-" // not a Go server with pgadapter
		if x.MessagesPerTransaction > 0 {
			perTx = fmt.Sprintf("%.1f", x.MessagesPerTransaction)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%.2f\t%.2f\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t\n", x.Impl, x.Scenario, x.Payload, phase, x.ClientsPerServer,
			num(x.AcceptedPerSec), num(x.DeliveredPerSec), num(x.DeliveriesPerSec), x.P50Ms, x.P99Ms,
			strings.Join(cpu, " "), strings.Join(rss, " "), perTx, x.Lost, x.Duplicates, x.Reordered, x.Stray)
	}
	tw.Flush()
	var spreads bool
	for _, x := range r.Results {
		spreads = spreads || x.LastP99Ms > 0
	}
	if spreads {
		fmt.Fprintln(w, "\npaced phases, each broadcast's first and last receipt on the other servers (the first: the way to the receiving server; the gap to the last: its fan-out to its clients), and its receipt on the sender's own clients:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "impl\tscenario\tpayload\tfirst p50 ms\tfirst p99 ms\tlast p50 ms\tlast p99 ms\town p50 ms\town p99 ms\t")
		for _, x := range r.Results {
			if x.LastP99Ms > 0 {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%.2f\t%.2f\t%.2f\t%.2f\t%s\t%s\t\n", x.Impl, x.Scenario, x.Payload, x.FirstP50Ms, x.FirstP99Ms, x.LastP50Ms, x.LastP99Ms, ms(x.OwnP50Ms), ms(x.OwnP99Ms))
			}
		}
		tw.Flush()
	}
	if len(r.Checks) > 0 {
		fmt.Fprintln(w, "\ntargets:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, c := range r.Checks {
			verdict := "pass"
			if !c.Pass {
				verdict = "MISS"
			}
			if c.Count {
				fmt.Fprintf(tw, "  %s\t%.0f\t(%s)\t%s\n", c.Name, c.Ratio, c.Target, verdict)
			} else {
				fmt.Fprintf(tw, "  %s\t%.2f×\t(%s)\t%s\n", c.Name, c.Ratio, c.Target, verdict)
			}
		}
		tw.Flush()
	}
	if len(r.Bounds) > 0 {
		fmt.Fprintln(w, "\nwhat socket.io itself allows:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, b := range r.Bounds {
			fmt.Fprintf(tw, "  %s\t%.2f×\t(%s)\n", b.Name, b.Ratio, b.Note)
		}
		tw.Flush()
	}
	for _, x := range r.Results {
		for _, p := range x.Procs {
			for _, e := range p.Errors {
				fmt.Fprintf(w, "error reported by %s during %s %s %s: %s\n", p.Name, x.Scenario, x.Payload, x.Phase, e)
			}
		}
		for _, e := range x.ClientErrors {
			fmt.Fprintf(w, "%s %s %s %s: %s\n", x.Impl, x.Scenario, x.Payload, x.Phase, e)
		}
	}
}

// postgres is the server's version, and its durability settings when known.
// ms formats milliseconds, or "-" for none measured (older reports, a single server).
func ms(v float64) string {
	if v <= 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func (m machine) postgres() string {
	s := withDurability(m.PostgreSQL, m.Durability)
	if m.TLS != nil {
		if *m.TLS {
			s += ", over TLS"
		} else {
			s += ", without TLS"
		}
	}
	return s
}

// shortPostgres is postgres without the distribution's build, to fit the chart's line.
func (m machine) shortPostgres() string {
	v, _, _ := strings.Cut(m.PostgreSQL, " ")
	return withDurability(v, m.Durability)
}

func withDurability(version, durability string) string {
	if durability == "" {
		return version
	}
	return version + " (" + durability + ")"
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// num formats a rate with thousands separators.
func num(f float64) string {
	s := fmt.Sprintf("%.0f", f)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
