package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
)

// poller reads every client's socket in one goroutine through epoll (Linux), parsing
// what each read returns. It owns the clients' read state.
type poller struct {
	epfd int
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex // held while a client is read, added or removed
	clients map[int32]*client
}

func newPoller() (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	p := &poller{epfd: epfd, stop: make(chan struct{}), done: make(chan struct{}), clients: map[int32]*client{}}
	go p.run()
	return p, nil
}

// add parses what c already holds and starts watching its socket.
func (p *poller) add(c *client) error {
	tcp, ok := c.conn.(*net.TCPConn)
	if !ok {
		return errors.New("not a TCP connection")
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		return err
	}
	raw.Control(func(fd uintptr) { c.fd = int(fd) })
	c.p = p
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := c.parse(); err != nil {
		return err
	}
	p.clients[int32(c.fd)] = c
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(c.fd)}
	if err := syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		delete(p.clients, int32(c.fd))
		return fmt.Errorf("epoll add: %w", err)
	}
	return nil
}

// remove stops watching c, before its socket is closed (so that its descriptor, which a
// new connection may reuse, is never read by mistake).
func (p *poller) remove(c *client, why error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.clients[int32(c.fd)] == c {
		syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, c.fd, nil)
		delete(p.clients, int32(c.fd))
	}
	c.end(why)
}

func (p *poller) close() {
	close(p.stop)
	<-p.done
	syscall.Close(p.epfd)
}

func (p *poller) run() {
	defer close(p.done)
	events := make([]syscall.EpollEvent, 256)
	for {
		select {
		case <-p.stop:
			return
		default:
		}
		n, err := syscall.EpollWait(p.epfd, events, 100)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			panic(fmt.Sprintf("epoll_wait: %v", err)) // a bug: the descriptor is ours
		}
		for _, ev := range events[:n] {
			p.mu.Lock()
			if c := p.clients[ev.Fd]; c != nil {
				if err := p.read(c); err != nil {
					syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, c.fd, nil)
					delete(p.clients, ev.Fd)
					c.end(err)
				}
			}
			p.mu.Unlock()
		}
	}
}

// minRead is the least room a read is given: below it, the unparsed bytes move to the
// front of the buffer first.
const minRead = 64 << 10

// read reads what c's socket holds, up to its buffer, and parses it. The bytes of a frame
// not whole yet stay where they are while there is room after them: moving them to the
// front at every read copied half a 20 KB frame per read.
func (p *poller) read(c *client) error {
	start := cap(c.buf) - cap(c.in) // c.in ends at most at the end of c.buf
	end := start + len(c.in)
	if cap(c.buf)-end < minRead {
		if cap(c.buf)-len(c.in) < minRead {
			bigger := make([]byte, 2*cap(c.buf))
			copy(bigger, c.in)
			c.buf = bigger
		} else {
			copy(c.buf[:cap(c.buf)], c.in)
		}
		start, end = 0, len(c.in)
	}
	buf := c.buf[:cap(c.buf)]
	c.in = buf[start:end]
	m, err := syscall.Read(c.fd, buf[end:])
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
		return nil
	}
	if err != nil {
		return err
	}
	if m == 0 {
		return io.EOF
	}
	c.in = buf[start : end+m]
	return c.parse()
}
