package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	// The Go servers of the cluster are this test binary, re-executed.
	if v := os.Getenv(serveEnv); v != "" {
		serveMain(strings.Fields(v))
		return
	}
	os.Exit(m.Run())
}

// TestBenchRuns runs every phase briefly, on Go servers and, when Node.js is present
// (required in CI), on Node servers, clustered and alone: every broadcast must reach
// every client, pgadapter's in order, and the report must hold every figure.
func TestBenchRuns(t *testing.T) {
	node := "auto"
	if os.Getenv("PGADAPTER_REQUIRE_NODE") == "1" {
		node = "on"
	}
	cfg := config{Servers: 2, Clients: 3, BetweenClients: 1, Duration: 300 * time.Millisecond, Drain: 20 * time.Second,
		Rate: 100, Window: 200, Payloads: allPayloads, Node: node, NodeDir: "../../testdata/node",
		Scenarios: []string{"between", "clients", "alone"}, FastWS: true}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := run(ctx, cfg, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Ceiling.OnePerTx <= 0 || rep.Ceiling.ManyPerTx <= 0 || rep.Ceiling.LatencyP99Ms <= 0 {
		t.Errorf("PostgreSQL ceiling not measured: %+v", rep.Ceiling)
	}
	if rep.Machine.TLS == nil {
		t.Error("whether the connections use TLS is not recorded")
	}
	if rep.Databases != "one per implementation" {
		t.Errorf("databases %q: the clusters, all running at once, must each have one", rep.Databases)
	}
	if !slices.Contains(rep.Config.Impls, "go-fastws") {
		t.Errorf("impls %v: go-fastws not measured", rep.Config.Impls)
	}
	for _, impl := range rep.Config.Impls {
		want := 5 * len(allPayloads) // between and to clients, saturated and paced; alone
		n := 0
		for _, r := range rep.Results {
			if r.Impl != impl {
				continue
			}
			n++
			name := impl + " " + r.Scenario + " " + r.Payload + " " + r.Phase
			if r.Emitted == 0 || r.Delivered != r.Emitted || r.Lost != 0 {
				t.Errorf("%s: emitted %d, delivered to every remote client %d, receipts missing %d", name, r.Emitted, r.Delivered, r.Lost)
			}
			if impl != "node" && r.Reordered != 0 {
				t.Errorf("%s: %d broadcasts out of order", name, r.Reordered)
			}
			if r.NegativeLatency != 0 {
				t.Errorf("%s: %d receipts stamped before their emit: the processes' clocks disagree", name, r.NegativeLatency)
			}
			if r.Duplicates != 0 || r.Stray != 0 {
				t.Errorf("%s: %d receipts repeated, %d of another phase", name, r.Duplicates, r.Stray)
			}
			servers := 2
			if r.Scenario == scenarioAlone {
				servers = 1
			}
			// Latencies of a microsecond or less (negative ones among them) mean that
			// the processes do not stamp with the same clock.
			if r.P50Ms <= 0.0011 {
				t.Errorf("%s: p50 latency %.4f ms: the sender's clock is ahead of the clients'", name, r.P50Ms)
			}
			// Paced phases split each broadcast's way into its first and last receipt:
			// the first no later than any, the last no earlier.
			if r.Rate > 0 && (r.FirstP50Ms <= 0 || r.FirstP50Ms > r.LastP50Ms || r.FirstP99Ms > r.LastP99Ms || r.LastP99Ms > r.MaxMs*1.01) {
				t.Errorf("%s: first receipts p50 %.3f p99 %.3f, last p50 %.3f p99 %.3f, max %.3f", name, r.FirstP50Ms, r.FirstP99Ms, r.LastP50Ms, r.LastP99Ms, r.MaxMs)
			}
			// The sender's own clients, measured apart in paced phases of a cluster.
			if ownWanted := r.Rate > 0 && servers > 1; ownWanted != (r.OwnP50Ms > 0 && r.OwnP99Ms >= r.OwnP50Ms) {
				t.Errorf("%s: own clients p50 %.3f p99 %.3f", name, r.OwnP50Ms, r.OwnP99Ms)
			}
			// The sender's messages per transaction, for Go servers with pgadapter only:
			// at least one each (its broadcasts, its heartbeats).
			if goCluster := strings.HasPrefix(impl, "go") && r.Scenario != scenarioAlone; goCluster != (r.MessagesPerTransaction >= 1) {
				t.Errorf("%s: %.2f messages per transaction", name, r.MessagesPerTransaction)
			}
			if r.DeliveredPerSec <= 0 || r.P99Ms <= 0 || len(r.Procs) != servers {
				t.Errorf("%s: figures missing: %+v", name, r)
			}
			for _, p := range r.Procs {
				if len(p.Errors) > 0 {
					t.Errorf("%s: %s reported %q", name, p.Name, p.Errors)
				}
			}
			if len(r.ClientErrors) > 0 {
				t.Errorf("%s: %q", name, r.ClientErrors)
			}
		}
		if n != want {
			t.Errorf("%s: %d results, want %d", impl, n, want)
		}
	}
	var table bytes.Buffer
	printTable(&table, rep)
	if !strings.Contains(table.String(), "between servers") || !strings.Contains(table.String(), "targets:") ||
		!strings.Contains(table.String(), "first and last receipt") || !strings.Contains(table.String(), "own p99 ms") ||
		!strings.Contains(table.String(), "msgs/tx") ||
		!strings.Contains(table.String(), "TLS") ||
		!strings.Contains(table.String(), "what socket.io itself allows:") {
		t.Errorf("table:\n%s", table.String())
	}
	chart := filepath.Join(t.TempDir(), "chart.svg")
	if err := writeChart(chart, rep); err != nil {
		t.Fatal(err)
	}
	if svg, _ := os.ReadFile(chart); !bytes.Contains(svg, []byte("<svg")) || !bytes.Contains(svg, []byte("<rect")) {
		t.Errorf("chart: %.200s", svg)
	}
}

// TestSameTLS: a URL that does not ask for TLS gets none for Go's connections either,
// as node-postgres reads it; one that names an sslmode keeps it.
func TestSameTLS(t *testing.T) {
	t.Setenv("PGSSLMODE", "")
	for in, want := range map[string]string{
		"postgres://u@h:5432/db":                 "postgres://u@h:5432/db?sslmode=disable",
		"postgresql://u@h/db?application_name=x": "postgresql://u@h/db?application_name=x&sslmode=disable",
		"postgres://u@h/db?sslmode=require":      "postgres://u@h/db?sslmode=require",
		"postgres://u@h/db?sslmode=disable":      "postgres://u@h/db?sslmode=disable",
		"host=h user=u dbname=db":                "host=h user=u dbname=db",
	} {
		if got := sameTLS(in); got != want {
			t.Errorf("sameTLS(%q) = %q, want %q", in, got, want)
		}
	}
	t.Setenv("PGSSLMODE", "require")
	if got := sameTLS("postgres://u@h/db"); got != "postgres://u@h/db" {
		t.Errorf("with PGSSLMODE set: %q", got)
	}
}

// TestEndedClientReplaced: a client that ended (engine.io's own transport closes one now
// and then for "ping timeout") is dialled again before the next phase, which then
// receives everything. Before, every phase after it counted its receipts lost: two runs
// in a row lost all their engine.io-transport phases after one such close.
func TestEndedClientReplaced(t *testing.T) {
	cl, err := startCluster(config{}, "go", 1, []string{serveEnv + "=- - -", adapterEnv + "=memory"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.close()
	if err := cl.connect(3); err != nil {
		t.Fatal(err)
	}
	gone := cl.clients[0][1]
	gone.p.remove(gone, errors.New("ended by the test"))
	var log bytes.Buffer
	r, err := cl.measure(phase{Scenario: scenarioAlone, Payload: allPayloads[0], Window: 100, Duration: 200 * time.Millisecond, Drain: 20 * time.Second}, &log)
	if err != nil {
		t.Fatal(err)
	}
	if len(cl.clients[0]) != 3 || slices.Contains(cl.clients[0], gone) {
		t.Fatalf("%d clients, the ended one among them %v", len(cl.clients[0]), slices.Contains(cl.clients[0], gone))
	}
	if r.Emitted == 0 || r.Delivered != r.Emitted || r.Lost != 0 || len(r.ClientErrors) > 0 {
		t.Fatalf("emitted %d, delivered %d, lost %d, client errors %q", r.Emitted, r.Delivered, r.Lost, r.ClientErrors)
	}
	if !strings.Contains(log.String(), "1 clients ended, dialled again") {
		t.Fatalf("log: %q", log.String())
	}
}
