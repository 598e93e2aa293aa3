package main

import (
	"context"
	"fmt"
	"html"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// writeChart draws throughput and paced latency against the references as SVG, and, for
// a .png path, renders that SVG with headless Chromium (no image library needed).
func writeChart(path string, r *report) error {
	svg := chartSVG(r)
	if !strings.HasSuffix(path, ".png") {
		return os.WriteFile(path, []byte(svg), 0o644)
	}
	browser := ""
	for _, b := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(b); err == nil {
			browser = p
			break
		}
	}
	if browser == "" {
		return fmt.Errorf("a .png chart needs Chromium on PATH; write .svg instead")
	}
	dir, err := os.MkdirTemp("", "pgadapter-chart")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	page := filepath.Join(dir, "chart.html")
	doc := `<!doctype html><html><body style="margin:0;background:#fff">` + svg + `</body></html>`
	if err := os.WriteFile(page, []byte(doc), 0o644); err != nil {
		return err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
		"--user-data-dir="+filepath.Join(dir, "profile"), fmt.Sprintf("--window-size=%d,%d", chartW, chartH),
		"--screenshot="+abs, "file://"+page)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", browser, err, out)
	}
	return nil
}

const chartW, chartH = 1100, 1180

const goColor, fastColor, nodeColor, pgColor = "#1f6feb", "#1a7f37", "#d29922", "#6e7781"

// implColor is impl's color in the chart.
func implColor(impl string) string {
	switch impl {
	case "go":
		return goColor
	case "go-fastws":
		return fastColor
	}
	return nodeColor
}

type bar struct {
	label string
	value float64
	color string
	text  string
}

func chartSVG(r *report) string {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="DejaVu Sans, Arial, sans-serif" font-size="13">`, chartW, chartH)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="#fff"/>`)
	m := r.Machine
	title := fmt.Sprintf("pgadapter vs @socket.io/postgres-adapter 0.5.0: %d servers, %d clients each", r.Config.Servers, r.Config.Clients)
	fmt.Fprintf(&b, `<text x="20" y="28" font-size="18" font-weight="bold">%s</text>`, html.EscapeString(title))
	fmt.Fprintf(&b, `<text x="20" y="48" fill="#555">%s</text>`, html.EscapeString(fmt.Sprintf("%d CPUs, %s, PostgreSQL %s, Node.js %s, %s — one run, %s",
		m.CPUs, m.GoVersion, m.shortPostgres(), orNone(m.Node), r.Started.Format("2006-01-02"), "every figure measured in the same run")))

	// Throughput panel.
	var tput []bar
	if r.Ceiling.OnePerTx > 0 {
		// The many-per-transaction ceiling, an order of magnitude above the rest, is a
		// line of text rather than a bar that would flatten the others.
		tput = append(tput, bar{"PostgreSQL NOTIFY ceiling, 1 per transaction", r.Ceiling.OnePerTx, pgColor, num(r.Ceiling.OnePerTx) + "/s"})
		fmt.Fprintf(&b, `<text x="20" y="%d" fill="#555">%s</text>`, chartH-16, html.EscapeString(fmt.Sprintf(
			"PostgreSQL NOTIFY ceiling, %d per transaction: %s/s (4 senders, 1 listener)", r.Ceiling.ManyPerTxSize, num(r.Ceiling.ManyPerTx))))
	}
	add := func(scenario, payload, label string) {
		for _, impl := range []string{"go", "go-fastws", "node"} {
			x := r.find(impl, scenario, payload, "saturation")
			if x == nil {
				continue
			}
			tput = append(tput, bar{fmt.Sprintf("%s, %s (%d cl.)", implLabel(impl), label, x.ClientsPerServer), x.DeliveredPerSec, implColor(impl), num(x.DeliveredPerSec) + "/s"})
		}
	}
	for _, sc := range []string{scenarioBetween, scenarioClients} {
		for _, p := range r.Config.Payloads {
			add(sc, p.Name, p.Name)
		}
	}
	drawBars(&b, 20, 80, 640, "Broadcasts/s delivered to every client of the other servers (saturation)", tput, true)

	// Latency panel.
	var lat []bar
	if r.Ceiling.LatencyP99Ms > 0 {
		lat = append(lat, bar{"PostgreSQL NOTIFY alone, 1 per transaction", r.Ceiling.LatencyP99Ms, pgColor, fmt.Sprintf("%.1f ms", r.Ceiling.LatencyP99Ms)})
	}
	for _, sc := range []string{scenarioBetween, scenarioClients} {
		for _, p := range r.Config.Payloads {
			for _, impl := range []string{"go", "go-fastws", "node"} {
				x := r.find(impl, sc, p.Name, "paced")
				if x == nil {
					continue
				}
				lat = append(lat, bar{fmt.Sprintf("%s, %s (%d cl.)", implLabel(impl), p.Name, x.ClientsPerServer), x.P99Ms, implColor(impl), fmt.Sprintf("%.1f ms", x.P99Ms)})
			}
		}
	}
	drawBars(&b, 690, 80, 400, fmt.Sprintf("p99 latency to the other server, paced %d/s", r.Config.Rate), lat, true)

	// CPU panel: a receiving server of each cluster against socket.io alone, whose cost
	// no adapter removes.
	var cpu []bar
	const goAloneColor, fastAloneColor, nodeAloneColor = "#79c0ff", "#7ee2a8", "#f2cc60"
	for _, c := range []struct {
		impl, scenario, label, color string
		proc                         int
	}{
		{"go", scenarioClients, "pgadapter, receiving server", goColor, 1},
		{"go-fastws", scenarioClients, "pgadapter + fastws, receiving server", fastColor, 1},
		{"node", scenarioClients, "Node adapter, receiving server", nodeColor, 1},
		{"go", scenarioAlone, "Go socket.io v2.5.0 alone", goAloneColor, 0},
		{"go-fastws", scenarioAlone, "Go socket.io v2.5.0 + fastws alone", fastAloneColor, 0},
		{"node", scenarioAlone, "Node socket.io alone", nodeAloneColor, 0},
	} {
		if x := r.find(c.impl, c.scenario, "json-100B", "saturation"); x != nil && c.proc < len(x.Procs) {
			v := x.Procs[c.proc].CPUPer1000
			cpu = append(cpu, bar{c.label, v, c.color, fmt.Sprintf("%.3f s", v)})
		}
	}
	if len(cpu) > 0 {
		drawBars(&b, 690, 80+20+len(lat)*38+40, 400, fmt.Sprintf("CPU per 1000 broadcasts, 100 B, %d clients", r.Config.Clients), cpu, false)
	}
	b.WriteString(`</svg>`)
	return b.String()
}

// drawBars draws horizontal bars with their labels above them, scaled to the largest,
// or on a logarithmic scale when logScale is set (throughputs and latencies that span
// two orders of magnitude, where a linear scale would flatten all but the largest).
func drawBars(b *strings.Builder, x, y, w int, title string, bars []bar, logScale bool) {
	if logScale {
		title += " (log scale)"
	}
	fmt.Fprintf(b, `<text x="%d" y="%d" font-weight="bold">%s</text>`, x, y, html.EscapeString(title))
	lo, hi := math.Inf(1), 0.0
	for _, br := range bars {
		if br.value > 0 {
			lo, hi = min(lo, br.value), max(hi, br.value)
		}
	}
	if hi == 0 {
		return
	}
	lo /= 2 // the smallest bar still shows
	scale := func(v float64) float64 {
		if !logScale {
			return v / hi
		}
		if v <= lo {
			return 0
		}
		return math.Log(v/lo) / math.Log(hi/lo)
	}
	barW := float64(w - 90)
	for i, br := range bars {
		top := y + 20 + i*38
		fmt.Fprintf(b, `<text x="%d" y="%d" fill="#333">%s</text>`, x, top+12, html.EscapeString(br.label))
		bw := max(1, scale(br.value)*barW)
		fmt.Fprintf(b, `<rect x="%d" y="%d" width="%.1f" height="16" fill="%s"/>`, x, top+16, bw, br.color)
		fmt.Fprintf(b, `<text x="%.1f" y="%d" fill="#111">%s</text>`, float64(x)+bw+6, top+29, html.EscapeString(br.text))
	}
}
