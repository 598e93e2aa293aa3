// Command pgadapter-bench measures a cluster of Socket.IO servers joined through
// PostgreSQL: broadcasts emitted on one server and received by real clients of every
// server. It measures pgadapter and, in the same run, the references it is judged
// against: PostgreSQL's own NOTIFY ceiling on this machine and, when Node.js is present, a
// cluster of Node.js servers with @socket.io/postgres-adapter 0.5.0. It also measures
// "socket.io alone": one server of each library with its in-memory adapter and no
// PostgreSQL, whose cost to deliver to its clients no adapter can remove.
//
//	go run ./cmd/pgadapter-bench                 # the full run, about 5 minutes
//	go run ./cmd/pgadapter-bench -h              # the settings
//
// Each server is its own process (the command re-executes itself for Go servers, and runs
// testdata/node/bench-server.js for Node servers), so that CPU time and peak memory are
// per server. Server 0 emits; every server has the same number of clients. A phase is
// either saturation, where the sender may have at most -window broadcasts not yet received
// by every client of the other servers, or paced at -rate broadcasts per second. Every
// phase runs for -duration, then waits for what is in flight.
//
// The clusters of every implementation run at once, each in its own database, and take
// turns phase by phase, so that the machine's drift over a run stays out of the ratios.
//
// It prints a table and, with -json and -chart, writes the results as JSON and a chart.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/socketio-pg/pgadapter/internal/pgtest"
	"github.com/socketio-pg/pgadapter/internal/testenv"
)

// serveEnv, when set in the environment, makes the command run as one Go server of the
// cluster under test instead of as the benchmark (its value: DB URL, channel prefix and
// table name, separated by spaces).
const serveEnv = "PGADAPTER_BENCH_SERVE"

type config struct {
	Servers        int           `json:"servers"`
	Clients        int           `json:"clientsPerServer"`
	BetweenClients int           `json:"betweenServersClients"`
	Duration       time.Duration `json:"-"`
	Drain          time.Duration `json:"-"`
	Rate           int           `json:"pacedRate"`
	Window         int64         `json:"window"`
	GOGC           int           `json:"goGOGC,omitempty"`
	GOMAXPROCS     int           `json:"goGOMAXPROCS,omitempty"`
	InlineBinary   bool          `json:"goInlineBinary,omitempty"`
	SyncCommit     bool          `json:"goSynchronousCommit,omitempty"`
	LoggedTable    bool          `json:"goLoggedTable,omitempty"`
	PGNoSync       bool          `json:"-"`
	Payloads       []payload     `json:"payloads"`
	Node           string        `json:"-"`
	NodeDir        string        `json:"-"`
	DB             string        `json:"-"`
	JSON           string        `json:"-"`
	Chart          string        `json:"-"`
	Impls          []string      `json:"impls"`
	FastWS         bool          `json:"-"`
	Scenarios      []string      `json:"scenarios"`
	PhaseSeconds   float64       `json:"phaseSeconds"`
}

type payload struct {
	Name   string `json:"name"`
	Size   int    `json:"size"`
	Binary bool   `json:"binary"`
}

var allPayloads = []payload{
	{"json-100B", 100, false},
	{"json-20KB", 20000, false},
	{"binary-1KB", 1024, true},
}

func main() {
	if v := os.Getenv(serveEnv); v != "" {
		serveMain(strings.Fields(v))
		return
	}
	cfg := config{}
	flag.IntVar(&cfg.Servers, "servers", 2, "servers in each cluster (at least 2); server 0 emits")
	flag.IntVar(&cfg.Clients, "clients", 50, "Socket.IO clients per server")
	flag.IntVar(&cfg.BetweenClients, "between-clients", 1, "clients per server in the between-servers phase, where delivery to clients is not what is measured")
	flag.DurationVar(&cfg.Duration, "duration", 5*time.Second, "how long each phase emits")
	flag.DurationVar(&cfg.Drain, "drain", 20*time.Second, "how long a phase waits for what is in flight after it stops emitting, without progress, before counting the rest as lost")
	flag.IntVar(&cfg.Rate, "rate", 200, "broadcasts per second in the paced phases")
	flag.Int64Var(&cfg.Window, "window", 2000, "broadcasts in flight at most in the saturation phases")
	flag.IntVar(&cfg.GOGC, "gogc", 0, "GOGC of the Go servers, the garbage collector's heap growth in percent; 0 leaves Go's default (100). Higher values collect less often: faster for small messages, slower for 20 KB ones, whose larger heap costs page faults")
	flag.IntVar(&cfg.GOMAXPROCS, "gomaxprocs", 0, "GOMAXPROCS of the Go servers, the threads that run Go code at once; 0 leaves Go's default (the CPUs). A Node server runs JavaScript on one")
	scenarios := flag.String("scenarios", "between,clients,alone", "what to measure: between (servers with -between-clients clients), clients (-clients clients, each payload, saturation and paced), alone (the reference of one server with -clients clients and socket.io's in-memory adapter, each payload, saturation)")
	payloads := flag.String("payloads", "json-100B,json-20KB,binary-1KB", "payloads to measure, from "+payloadNames())
	flag.BoolVar(&cfg.InlineBinary, "inline-binary", false, "give the Go servers Options.InlineBinary: binary messages that fit travel in the NOTIFY payload (Go-only clusters)")
	flag.BoolVar(&cfg.LoggedTable, "logged-table", false, "give the Go servers Options.LoggedTable: their attachments table is an ordinary one, as Node's adapter makes it, instead of UNLOGGED")
	flag.BoolVar(&cfg.SyncCommit, "sync-commit", false, "give the Go servers Options.SynchronousCommit: transactions that insert attachment rows wait for their commit's disk flush")
	flag.BoolVar(&cfg.PGNoSync, "pg-nosync", false, "run the temporary PostgreSQL with fsync, synchronous_commit and full_page_writes off, as the tests' one; by default it keeps PostgreSQL's own durability, as deployed")
	flag.BoolVar(&cfg.FastWS, "fastws", true, "also measure Go servers on the fastws WebSocket transport (impl go-fastws)")
	flag.StringVar(&cfg.Node, "node", "auto", "the Node.js reference cluster: auto (when node and npm are on PATH), on (fail without it) or off")
	flag.StringVar(&cfg.NodeDir, "node-dir", "testdata/node", "the npm project holding bench-server.js and its lockfile")
	flag.StringVar(&cfg.DB, "db", "", "PostgreSQL URL (default $DATABASE_URL, or else a temporary server started from the local PostgreSQL binaries)")
	flag.StringVar(&cfg.JSON, "json", "", "write the results as JSON to this file")
	from := flag.String("from", "", "measure nothing: print the table of, and chart, the results in this JSON file (from -json), judged by this version's targets")
	flag.StringVar(&cfg.Chart, "chart", "", "write a chart of the results to this file (.svg, or .png when Chromium is installed)")
	flag.Parse()
	for _, name := range strings.Split(*payloads, ",") {
		p, ok := payloadNamed(strings.TrimSpace(name))
		if !ok {
			fatalf("unknown payload %q (want %s)", name, payloadNames())
		}
		cfg.Payloads = append(cfg.Payloads, p)
	}
	for _, name := range strings.Split(*scenarios, ",") {
		switch name = strings.TrimSpace(name); name {
		case "between", "clients", "alone":
			cfg.Scenarios = append(cfg.Scenarios, name)
		default:
			fatalf("unknown scenario %q (want between, clients, alone)", name)
		}
	}
	if cfg.Servers < 2 || cfg.Clients < 1 || cfg.BetweenClients < 1 || cfg.BetweenClients > cfg.Clients || cfg.Rate < 1 || cfg.Window < 1 || cfg.Duration <= 0 {
		fatalf("need -servers ≥ 2, 1 ≤ -between-clients ≤ -clients, -rate ≥ 1, -window ≥ 1, -duration > 0")
	}
	var rep *report
	if *from != "" {
		data, err := os.ReadFile(*from)
		if err != nil {
			fatalf("%v", err)
		}
		rep = &report{}
		if err := json.Unmarshal(data, rep); err != nil {
			fatalf("%s: %v", *from, err)
		}
		// Judged again by this version's targets and bounds (and written back with -json).
		rep.Checks, rep.Bounds = checks(rep), bounds(rep)
	} else {
		var err error
		if rep, err = run(context.Background(), cfg, os.Stderr); err != nil {
			fatalf("%v", err)
		}
	}
	printTable(os.Stdout, rep)
	if cfg.JSON != "" {
		data, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(cfg.JSON, append(data, '\n'), 0o644); err != nil {
			fatalf("%v", err)
		}
	}
	if cfg.Chart != "" {
		if err := writeChart(cfg.Chart, rep); err != nil {
			fatalf("chart: %v", err)
		}
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pgadapter-bench: "+format+"\n", args...)
	os.Exit(1)
}

func payloadNamed(name string) (payload, bool) {
	for _, p := range allPayloads {
		if p.Name == name {
			return p, true
		}
	}
	return payload{}, false
}

func payloadNames() string {
	var names []string
	for _, p := range allPayloads {
		names = append(names, p.Name)
	}
	return strings.Join(names, ", ")
}

// run measures everything cfg asks for; progress goes to log.
func run(ctx context.Context, cfg config, log *os.File) (*report, error) {
	cfg.PhaseSeconds = cfg.Duration.Seconds()
	dbURL := cfg.DB
	if dbURL == "" {
		dbURL = os.Getenv("DATABASE_URL")
	}
	if dbURL == "" {
		fmt.Fprintln(log, "starting a temporary PostgreSQL")
		start := pgtest.StartDurable
		if cfg.PGNoSync {
			start = pgtest.Start
		}
		srv, err := start(ctx)
		if err != nil {
			return nil, fmt.Errorf("no -db or DATABASE_URL, and a temporary PostgreSQL: %w", err)
		}
		defer srv.Stop()
		dbURL = srv.URL()
	}
	dbURL = sameTLS(dbURL)
	cfg.Impls = []string{"go"}
	if cfg.FastWS {
		cfg.Impls = append(cfg.Impls, "go-fastws")
	}
	switch cfg.Node {
	case "off":
	case "on", "auto":
		err := testenv.NpmCI(cfg.NodeDir)
		if err == nil {
			cfg.Impls = append(cfg.Impls, "node")
		} else if cfg.Node == "on" {
			return nil, fmt.Errorf("the Node.js reference: %w", err)
		} else {
			fmt.Fprintf(log, "no Node.js reference: %v\n", err)
		}
	default:
		return nil, fmt.Errorf("-node %q: want auto, on or off", cfg.Node)
	}

	rep := &report{Config: cfg, Machine: describeMachine(ctx, dbURL), Started: time.Now().UTC()}
	tag := strings.TrimPrefix(pgtest.Name("b"), "b_")
	table := "bench_attachments_" + tag
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, impl := range cfg.Impls { // in the given database, where they share it
			conn.Exec(context.Background(), "DROP TABLE IF EXISTS "+pgx.Identifier{implTable(table, impl)}.Sanitize())
		}
		conn.Close(context.Background())
	}()

	fmt.Fprintln(log, "PostgreSQL's ceiling")
	d := min(cfg.Duration, 3*time.Second)
	if rep.Ceiling.OnePerTx, err = ceiling(ctx, dbURL, "bench_ceiling_"+tag, 1, d); err != nil {
		return nil, err
	}
	if rep.Ceiling.ManyPerTx, err = ceiling(ctx, dbURL, "bench_ceiling_"+tag, 100, d); err != nil {
		return nil, err
	}
	rep.Ceiling.ManyPerTxSize = 100
	if rep.Ceiling.LatencyP50Ms, rep.Ceiling.LatencyP99Ms, err = notifyLatency(ctx, dbURL, "bench_latency_"+tag, cfg.Rate, cfg.Duration); err != nil {
		return nil, err
	}

	if slices.Contains(cfg.Scenarios, "clients") || slices.Contains(cfg.Scenarios, "between") {
		dbs, drop, err := implDatabases(ctx, conn, dbURL, cfg.Impls, tag, table, log)
		defer drop()
		if err != nil {
			return nil, err
		}
		rep.Databases = "one per implementation"
		for _, impl := range cfg.Impls {
			if dbs[impl] == dbURL {
				rep.Databases = "shared"
			}
		}
		results, err := runClusters(cfg, dbs, tag, table, log)
		rep.Results = append(rep.Results, results...)
		if err != nil {
			return nil, err
		}
	}
	if slices.Contains(cfg.Scenarios, "alone") {
		results, err := runAlone(cfg, log)
		rep.Results = append(rep.Results, results...)
		if err != nil {
			return nil, err
		}
	}
	// The table reads by implementation: each one's phases together, in the order run.
	scenario := map[string]int{scenarioBetween: 0, scenarioClients: 1, scenarioAlone: 2}
	slices.SortStableFunc(rep.Results, func(a, b *result) int {
		if c := slices.Index(cfg.Impls, a.Impl) - slices.Index(cfg.Impls, b.Impl); c != 0 {
			return c
		}
		return scenario[a.Scenario] - scenario[b.Scenario]
	})
	rep.Checks = checks(rep)
	rep.Bounds = bounds(rep)
	return rep, nil
}

// implDatabases gives each implementation's cluster a database of its own, Node's with
// the attachments table (Node's adapter expects it; the Go servers create theirs), and
// returns their URLs and a function that drops them. The clusters run at once, and
// PostgreSQL wakes every LISTEN connection of a database for each notification in it:
// in one database, the idle clusters' listeners would add their work to every phase.
// Where databases cannot be created (a DATABASE_URL whose role may not, or that is not
// a URL), the clusters share the one given, and the log says so.
func implDatabases(ctx context.Context, conn *pgx.Conn, dbURL string, impls []string, tag, table string, log *os.File) (map[string]string, func(), error) {
	dbs := map[string]string{}
	var created []string
	drop := func() {
		for _, name := range created {
			conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
		}
	}
	u, perr := url.Parse(dbURL)
	for _, impl := range impls {
		dbs[impl] = dbURL
		if perr != nil || u.Scheme == "" {
			continue
		}
		name := "bench_" + strings.ReplaceAll(impl, "-", "_") + "_" + tag
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
			fmt.Fprintf(log, "the clusters share one database (%v): the idle ones' listeners add to PostgreSQL's work\n", err)
			break
		}
		created = append(created, name)
		v := *u
		v.Path = "/" + name
		dbs[impl] = v.String()
	}
	for _, impl := range impls {
		if impl != "node" {
			continue // the Go servers create theirs, as Options says
		}
		c, err := pgx.Connect(ctx, dbs[impl])
		if err != nil {
			return dbs, drop, err
		}
		_, err = c.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+pgx.Identifier{implTable(table, impl)}.Sanitize()+
			" (id bigserial UNIQUE, created_at timestamptz DEFAULT NOW(), payload bytea)")
		c.Close(ctx)
		if err != nil {
			return dbs, drop, err
		}
	}
	return dbs, drop, nil
}

// implTable is an implementation's attachments table. Each has its own, even where the
// clusters share a database: the Go servers found Node's table, made first, and used it
// (a logged table, while the report said unlogged), and every cluster's rows shared it.
func implTable(table, impl string) string {
	return table + "_" + strings.ReplaceAll(impl, "-", "_")
}

// runClusters starts a cluster of each implementation, all at once, then measures each
// phase on one cluster after the other: the between-servers phases with few clients
// first, then the others with all of them. Taking turns phase by phase, rather than
// implementation by implementation, keeps the machine's drift over the minutes of a run
// out of the ratios between implementations.
func runClusters(cfg config, dbs map[string]string, tag, table string, log *os.File) ([]*result, error) {
	var cls []*cluster
	defer func() {
		for _, cl := range cls {
			cl.close()
		}
	}()
	for _, impl := range cfg.Impls {
		cl, err := startReady(cfg, impl, dbs[impl], "bench_"+impl+"_"+tag, implTable(table, impl), log)
		if err != nil {
			return nil, fmt.Errorf("%s cluster: %w", impl, err)
		}
		cls = append(cls, cl)
	}
	var results []*result
	// Each payload starts with the next implementation, for both its phases. In a fixed
	// order, the first of every paced phase always followed the last one's saturation
	// phase, the heaviest, and paid for what it left behind (WAL to flush, rows to
	// vacuum, a garbage collection): that was always the go cluster after the Node
	// one's. (Turning at each phase would not do with two implementations: each phase
	// would then start with the one that ended the phase before.)
	turn := 0
	each := func(p phase) error {
		for i := range cls {
			cl := cls[(turn+i)%len(cls)]
			r, err := cl.measure(p, log)
			if r != nil {
				results = append(results, r)
			}
			if err != nil {
				return fmt.Errorf("%s cluster: %w", cl.impl, err)
			}
		}
		return nil
	}
	if slices.Contains(cfg.Scenarios, "between") {
		for _, p := range cfg.Payloads {
			if err := each(phase{Scenario: scenarioBetween, Payload: p, Window: cfg.Window, Duration: cfg.Duration, Drain: cfg.Drain}); err != nil {
				return results, err
			}
			if err := each(phase{Scenario: scenarioBetween, Payload: p, Rate: cfg.Rate, Duration: cfg.Duration, Drain: cfg.Drain}); err != nil {
				return results, err
			}
			turn++
		}
	}
	if !slices.Contains(cfg.Scenarios, "clients") {
		return results, nil
	}
	for _, cl := range cls {
		if err := cl.connect(cfg.Clients); err != nil {
			return results, fmt.Errorf("%s cluster: %w", cl.impl, err)
		}
	}
	for _, p := range cfg.Payloads {
		if err := each(phase{Scenario: scenarioClients, Payload: p, Window: cfg.Window, Duration: cfg.Duration, Drain: cfg.Drain}); err != nil {
			return results, err
		}
		if err := each(phase{Scenario: scenarioClients, Payload: p, Rate: cfg.Rate, Duration: cfg.Duration, Drain: cfg.Drain}); err != nil {
			return results, err
		}
		turn++
	}
	return results, nil
}

// startReady starts a cluster of impl servers on dbURL with cfg.BetweenClients clients
// each, and returns it once a broadcast reaches every client and a warm-up is done.
func startReady(cfg config, impl, dbURL, prefix, table string, log *os.File) (*cluster, error) {
	fmt.Fprintf(log, "%s cluster: %d servers\n", impl, cfg.Servers)
	cl, err := startCluster(cfg, impl, cfg.Servers, []string{serveEnv + "=" + dbURL + " " + prefix + " " + table},
		[]string{"DATABASE_URL=" + dbURL, "CHANNEL_PREFIX=" + prefix, "TABLE_NAME=" + table})
	if err != nil {
		return nil, err
	}
	if err := cl.connect(cfg.BetweenClients); err != nil {
		cl.close()
		return nil, err
	}
	// A Node server says it is ready once its HTTP server listens, before its adapter's
	// LISTEN is in place, and what is published until then never reaches it: probe with
	// one broadcast at a time until one reaches every client.
	probe := phase{Scenario: "probe", Payload: allPayloads[0], Window: 1, Duration: 100 * time.Millisecond, Drain: 2 * time.Second}
	for try := 1; ; try++ {
		r, err := cl.run(probe)
		if err != nil {
			cl.close()
			return nil, err
		}
		if r.Lost == 0 && r.Delivered > 0 {
			break
		}
		if try == 30 {
			cl.close()
			return nil, fmt.Errorf("the servers do not receive each other's broadcasts")
		}
	}
	if err := cl.warmUp(cfg); err != nil {
		cl.close()
		return nil, err
	}
	return cl, nil
}

// runAlone measures the reference of one server of each implementation with socket.io's
// in-memory adapter and cfg.Clients clients: each payload, saturated, the servers
// taking turns as in runClusters.
func runAlone(cfg config, log *os.File) ([]*result, error) {
	var cls []*cluster
	defer func() {
		for _, cl := range cls {
			cl.close()
		}
	}()
	for _, impl := range cfg.Impls {
		fmt.Fprintf(log, "%s alone: 1 server, in-memory adapter\n", impl)
		cl, err := startCluster(cfg, impl, 1, []string{serveEnv + "=- - -", adapterEnv + "=memory"}, []string{"ADAPTER=memory"})
		if err != nil {
			return nil, fmt.Errorf("%s alone: %w", impl, err)
		}
		cls = append(cls, cl)
		if err := cl.connect(cfg.Clients); err != nil {
			return nil, fmt.Errorf("%s alone: %w", impl, err)
		}
		if err := cl.warmUp(cfg); err != nil {
			return nil, fmt.Errorf("%s alone: %w", impl, err)
		}
	}
	var results []*result
	for turn, p := range cfg.Payloads {
		for i := range cls {
			cl := cls[(turn+i)%len(cls)] // each phase starts with the next, as in runClusters
			r, err := cl.measure(phase{Scenario: scenarioAlone, Payload: p, Window: cfg.Window, Duration: cfg.Duration, Drain: cfg.Drain}, log)
			if r != nil {
				results = append(results, r)
			}
			if err != nil {
				return results, fmt.Errorf("%s alone: %w", cl.impl, err)
			}
		}
	}
	return results, nil
}

// warmUp runs a short saturated phase (connections, JIT) and checks that every client
// received everything before anything is measured.
func (cl *cluster) warmUp(cfg config) error {
	warm := phase{Scenario: "warm-up", Payload: allPayloads[0], Window: cfg.Window, Duration: time.Second, Drain: cfg.Drain}
	if r, err := cl.run(warm); err != nil {
		return err
	} else if r.Lost > 0 {
		return fmt.Errorf("warm-up: %d deliveries missing", r.Lost)
	}
	return nil
}

// measure runs one phase, saying so on log. Clients that ended in an earlier phase are
// replaced first, and the log says so: engine.io's own transport closes one now and then
// for "ping timeout" (see the README's defects), and that client then received nothing
// for the rest of the run, every phase after counted lost. Its receipts missed are
// counted in the phase it ended in.
func (cl *cluster) measure(p phase, log io.Writer) (*result, error) {
	if n, per := cl.dropEnded(); n > 0 {
		fmt.Fprintf(log, "  %s: %d clients ended, dialled again\n", cl.impl, n)
		if err := cl.connect(per); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(log, "  %s: %s, %s, %s\n", cl.impl, p.Scenario, p.Payload.Name, p.kind())
	return cl.run(p)
}

// startCluster starts n servers of impl, Go servers with goEnv and Node servers with
// nodeEnv added to the environment.
func startCluster(cfg config, impl string, n int, goEnv, nodeEnv []string) (*cluster, error) {
	poller, err := newPoller()
	if err != nil {
		return nil, err
	}
	cl := &cluster{impl: impl, poller: poller}
	for i := range n {
		var cmd *exec.Cmd
		switch impl {
		case "go", "go-fastws":
			self, err := os.Executable()
			if err != nil {
				return nil, err
			}
			cmd = exec.Command(self)
			cmd.Env = append(os.Environ(), goEnv...)
			if impl == "go-fastws" {
				cmd.Env = append(cmd.Env, transportEnv+"=fastws")
			}
			if cfg.GOGC > 0 {
				cmd.Env = append(cmd.Env, "GOGC="+strconv.Itoa(cfg.GOGC))
			}
			if cfg.GOMAXPROCS > 0 {
				cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(cfg.GOMAXPROCS))
			}
			if cfg.InlineBinary {
				cmd.Env = append(cmd.Env, inlineEnv+"=1")
			}
			if cfg.SyncCommit {
				cmd.Env = append(cmd.Env, syncCommitEnv+"=1")
			}
			if cfg.LoggedTable {
				cmd.Env = append(cmd.Env, loggedTableEnv+"=1")
			}
		case "node":
			dir, err := filepath.Abs(cfg.NodeDir)
			if err != nil {
				return nil, err
			}
			cmd = exec.Command("node", filepath.Join(dir, "bench-server.js"))
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), nodeEnv...)
		}
		p, err := startProc(fmt.Sprintf("%s-%d", impl, i), cmd)
		if err != nil {
			cl.close()
			return nil, err
		}
		cl.procs = append(cl.procs, p)
		cl.clients = append(cl.clients, nil)
	}
	return cl, nil
}

// sameTLS returns dbURL with sslmode=disable when it is a URL that names no sslmode
// (nor does PGSSLMODE). Given such a URL, pgx tries TLS first ("prefer") and
// node-postgres does not use it: on a server with TLS enabled, as Debian's is, the Go
// servers paid for encryption that the Node servers did not (20 KB broadcasts between
// servers: 5,882/s over TLS against 7,043/s without, in one run each on the development
// machine). Where the URL asks for TLS, both use it.
func sameTLS(dbURL string) string {
	u, err := url.Parse(dbURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || os.Getenv("PGSSLMODE") != "" {
		return dbURL
	}
	q := u.Query()
	if q.Has("sslmode") || q.Has("ssl") {
		return dbURL
	}
	q.Set("sslmode", "disable")
	u.RawQuery = q.Encode()
	return u.String()
}

func describeMachine(ctx context.Context, dbURL string) machine {
	m := machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if name, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), ":"))
				break
			}
		}
	}
	m.MemoryGB = float64(statusKB("/proc/meminfo", "MemTotal:")) / (1 << 20)
	if out, err := exec.Command("node", "--version").Output(); err == nil {
		m.Node = strings.TrimSpace(string(out))
	}
	if conn, err := pgx.Connect(ctx, dbURL); err == nil {
		conn.QueryRow(ctx, "SHOW server_version").Scan(&m.PostgreSQL)
		_, isTLS := conn.PgConn().Conn().(*tls.Conn)
		m.TLS = &isTLS
		var fsync, syncCommit string
		if conn.QueryRow(ctx, "SELECT current_setting('fsync'), current_setting('synchronous_commit')").Scan(&fsync, &syncCommit) == nil {
			m.Durability = "fsync " + fsync + ", synchronous_commit " + syncCommit
		}
		conn.Close(ctx)
	}
	return m
}
