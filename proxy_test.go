package pgadapter

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"
)

// proxy forwards TCP connections to a target. stall makes every connection open now go
// silent without closing, as a dead NAT entry or a frozen peer would; connections made
// afterwards work normally.
type proxy struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	conns  []*proxied
	closed bool // connections accepted since are closed at once
	wg     sync.WaitGroup
	// delay, when set before the first connection, is added before each write: a
	// slow link.
	delay time.Duration
}

type proxied struct {
	client, server net.Conn
	stalled        chan struct{}
	once           sync.Once
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

// proxiedDB starts a proxy to the test database, with delay added before each write (0
// for none), and returns it with the database's URL through it.
func proxiedDB(t *testing.T, delay time.Duration) (*proxy, string) {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	p := newProxy(t, u.Host)
	p.delay = delay
	u.Host = p.addr()
	return p, u.String()
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		pc := &proxied{client: c, server: s, stalled: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			// Accepted before close closed the listener: close would otherwise wait
			// for its pipes, which the connection's owner keeps open.
			p.mu.Unlock()
			c.Close()
			s.Close()
			continue
		}
		p.conns = append(p.conns, pc)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(pc, c, s)
		go p.pipe(pc, s, c)
	}
}

// pipe copies from src to dst until either closes; once stalled, it stops copying but
// keeps both ends open.
func (p *proxy) pipe(pc *proxied, src, dst net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-pc.stalled:
			// Swallow everything, answer nothing, until closed.
			for err == nil {
				_, err = src.Read(buf)
			}
			return
		default:
		}
		if n > 0 {
			if p.delay > 0 {
				time.Sleep(p.delay) // the fault: a slow link
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				dst.Close()
			} else if tc, ok := dst.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
			return
		}
	}
}

// stall silences every connection open now.
func (p *proxy) stall() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, pc := range p.conns {
		pc.once.Do(func() { close(pc.stalled); n++ })
	}
	return n
}

// cut closes every connection open now, and those made until heal: a database that
// cannot be reached.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, pc := range p.conns {
		pc.client.Close()
		pc.server.Close()
	}
	p.conns = nil
}

// heal lets connections through again after cut.
func (p *proxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = false
}

func (p *proxy) close() {
	p.l.Close()
	p.mu.Lock()
	p.closed = true
	for _, pc := range p.conns {
		pc.client.Close()
		pc.server.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}
