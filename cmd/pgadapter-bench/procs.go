package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one server process, Go or Node.js, speaking the line protocol of server.go.
type proc struct {
	name string
	cmd  *exec.Cmd
	port int

	wmu   sync.Mutex
	stdin io.WriteCloser

	stopped chan stoppedMsg
	exited  chan struct{}

	errMu       sync.Mutex
	errors      []string
	disconnects []string // clients the server dropped
}

type stoppedMsg struct {
	Count   int64 `json:"count"`
	FirstUs int64 `json:"firstUs"`
	LastUs  int64 `json:"lastUs"`
	// Go servers only: the messages and transactions their adapter published during
	// the phase.
	Published    int64 `json:"published"`
	Transactions int64 `json:"transactions"`
}

// startProc starts a server process and waits for it to listen.
func startProc(name string, cmd *exec.Cmd) (*proc, error) {
	p := &proc{name: name, cmd: cmd, stopped: make(chan stoppedMsg, 1), exited: make(chan struct{})}
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	ready := make(chan int, 1)
	go p.read(stdout, ready)
	select {
	case p.port = <-ready:
		return p, nil
	case <-p.exited:
		cmd.Wait()
		return nil, fmt.Errorf("server %s exited at start", name)
	case <-time.After(60 * time.Second):
		p.kill()
		return nil, fmt.Errorf("server %s not ready after 60s", name)
	}
}

func (p *proc) read(r io.Reader, ready chan<- int) {
	defer close(p.exited)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var msg struct {
			Type    string `json:"type"`
			Port    int    `json:"port"`
			Message string `json:"message"`
			stoppedMsg
		}
		if err := json.Unmarshal(sc.Bytes(), &msg); err != nil {
			continue // not ours (a library printing to stdout)
		}
		switch msg.Type {
		case "ready":
			ready <- msg.Port
		case "stopped":
			p.stopped <- msg.stoppedMsg
		case "error":
			p.errMu.Lock()
			if len(p.errors) < 100 {
				p.errors = append(p.errors, msg.Message)
			}
			p.errMu.Unlock()
		case "disconnect":
			p.errMu.Lock()
			if len(p.disconnects) < 100 {
				p.disconnects = append(p.disconnects, msg.Message)
			}
			p.errMu.Unlock()
		}
	}
}

func (p *proc) send(v any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	_, err = p.stdin.Write(append(line, '\n'))
	return err
}

// stop ends the running sender and returns what it sent.
func (p *proc) stop() (stoppedMsg, error) {
	if err := p.send(map[string]any{"op": "stop"}); err != nil {
		return stoppedMsg{}, err
	}
	select {
	case m := <-p.stopped:
		return m, nil
	case <-p.exited:
		return stoppedMsg{}, fmt.Errorf("server %s exited", p.name)
	case <-time.After(30 * time.Second):
		return stoppedMsg{}, fmt.Errorf("server %s did not stop its sender within 30s", p.name)
	}
}

// takeDisconnects returns and forgets the clients the server dropped (see serveMain).
// Unlike errors, they are kept across phases: a client dropped between two phases
// misses the next one.
func (p *proc) takeDisconnects() []string { return p.take(&p.disconnects) }

// takeErrors returns and forgets the errors the server reported.
func (p *proc) takeErrors() []string { return p.take(&p.errors) }

// take empties one of the lists the server's messages fill, and returns what it held.
func (p *proc) take(list *[]string) []string {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	l := *list
	*list = nil
	return l
}

// quit asks the server to exit, and kills it if it does not within 5 s.
func (p *proc) quit() {
	p.send(map[string]any{"op": "quit"})
	p.stdin.Close()
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
	}
	p.kill()
}

func (p *proc) kill() {
	p.cmd.Process.Kill()
	p.cmd.Wait()
}

// cpu returns the CPU time (user and system) the process has used so far.
func (p *proc) cpu() (time.Duration, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: count fields after it.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("unexpected /proc/pid/stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, errors.New("unexpected /proc/pid/stat")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("unexpected /proc/pid/stat")
	}
	return ticks(utime + stime), nil
}

// ticks converts clock ticks to time. USER_HZ is 100 on every Linux architecture Go
// supports in practice; sysconf is not reachable without cgo.
func ticks(n int64) time.Duration { return time.Duration(n) * 10 * time.Millisecond }

// resetPeak resets the process's peak resident set size (Linux 4.0 and later), so that
// the next peakRSS is the peak of one phase. It reports whether that worked.
func (p *proc) resetPeak() bool {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", p.cmd.Process.Pid), []byte("5"), 0) == nil
}

// peakRSS returns the process's peak resident set size in bytes.
func (p *proc) peakRSS() int64 {
	return statusKB(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid), "VmHWM:") * 1024
}

func statusKB(path, field string) int64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// selfCPU returns the CPU time the bench command itself (the load generator) has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
