// Package pgtest gives tests and examples a PostgreSQL: the one DATABASE_URL names, or a
// temporary server started from the local PostgreSQL binaries and removed afterwards.
//
// A temporary server runs as the postgres system user when the caller is root (initdb
// refuses root), listens on 127.0.0.1 on a free port with trust authentication, and dies
// with the process that started it.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNoPostgres is returned when DATABASE_URL is unset and no PostgreSQL server binaries
// can be found.
var ErrNoPostgres = errors.New("pgtest: DATABASE_URL is unset and no PostgreSQL binaries (initdb, postgres) were found; " +
	"install the server package (Debian: apt-get install postgresql) or set DATABASE_URL")

// Server is a temporary PostgreSQL server.
type Server struct {
	dir    string
	bin    string
	port   int
	uid    *syscall.Credential
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	logf   *os.File

	durable bool // PostgreSQL's default fsync, synchronous_commit and full_page_writes
}

// BinDir finds the directory holding initdb and postgres: $PG_BINDIR, the PATH, or the
// newest /usr/lib/postgresql/*/bin (Debian keeps them off the PATH).
func BinDir() (string, error) {
	if d := os.Getenv("PG_BINDIR"); d != "" {
		for _, tool := range []string{"initdb", "postgres"} {
			if _, err := os.Stat(filepath.Join(d, tool)); err != nil {
				return "", fmt.Errorf("%w (PG_BINDIR=%s: %v)", ErrNoPostgres, d, err)
			}
		}
		return d, nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if _, err := exec.LookPath("postgres"); err == nil {
			return filepath.Dir(p), nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	for _, m := range matches {
		if _, err := os.Stat(filepath.Join(filepath.Dir(m), "postgres")); err == nil {
			return filepath.Dir(m), nil
		}
	}
	return "", ErrNoPostgres
}

func versionOf(p string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(p))))
	return v
}

// Start initialises and starts a temporary server. Stop removes it. The server does not
// flush its WAL to disk (fsync, synchronous_commit and full_page_writes are off): what
// tests need is speed, and the data dies with the server.
func Start(ctx context.Context) (*Server, error) { return start(ctx, false) }

// StartDurable is Start with PostgreSQL's default durability: each commit that wrote WAL
// waits for it to be flushed to disk, as on a deployed server. Benchmarks use it, so that
// what they measure includes what a deployment pays.
func StartDurable(ctx context.Context) (*Server, error) { return start(ctx, true) }

func start(ctx context.Context, durable bool) (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin, durable: durable}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("pgtest: running as root and no postgres user to run the server as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.uid = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	if s.dir, err = os.MkdirTemp("", "pgadapter-pg-"); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if s.uid != nil {
		if err := os.Chown(s.dir, int(s.uid.Uid), int(s.uid.Gid)); err != nil {
			s.removeDir()
			return nil, fmt.Errorf("pgtest: %w", err)
		}
	}
	initdb := s.command(filepath.Join(bin, "initdb"), "-D", s.data(), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
	if out, err := initdb.CombinedOutput(); err != nil {
		s.removeDir()
		return nil, fmt.Errorf("pgtest: initdb: %w: %s", err, out)
	}
	// freePort's port is free when it returns, not necessarily when postgres binds it:
	// another process may take it in between. Such a start is tried again on another.
	for attempt := 1; ; attempt++ {
		if s.port, err = freePort(); err != nil {
			s.removeDir()
			return nil, err
		}
		err = s.start(ctx)
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, errBind) || attempt == bindAttempts {
			s.removeDir()
			return nil, err
		}
	}
}

// errBind is the error of a start whose postgres could not bind its port.
var errBind = errors.New("pgtest: postgres could not bind its port")

// bindAttempts bounds the starts tried when the port turns out taken.
const bindAttempts = 5

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.uid, Pdeathsig: syscall.SIGKILL, Setpgid: true}
	return cmd
}

func (s *Server) start(ctx context.Context) error {
	logName := filepath.Join(s.dir, "postgres.log")
	logf, err := os.OpenFile(logName, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	// What this start logs begins here: the log of earlier starts is kept.
	var logStart int64
	if st, err := logf.Stat(); err == nil {
		logStart = st.Size()
	}
	args := []string{"-D", s.data(), "-p", strconv.Itoa(s.port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=" + s.dir,
		"-c", "max_connections=200", "-c", "shared_buffers=64MB"}
	if !s.durable {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	cmd := s.command(filepath.Join(s.bin, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.mu.Lock()
	s.cmd, s.exited, s.logf = cmd, exited, logf
	s.mu.Unlock()

	deadline := time.Now().Add(60 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, s.URL())
		if err == nil {
			// Another server may answer on the port that this one could not bind
			// (it exits a moment later): only this one's data directory will do.
			var dir string
			err = conn.QueryRow(cctx, "SHOW data_directory").Scan(&dir)
			conn.Close(context.Background())
			if err == nil && filepath.Clean(dir) != filepath.Clean(s.data()) {
				err = fmt.Errorf("pgtest: port %d answered by the server of %s", s.port, dir)
			}
		}
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			s.mu.Lock()
			if s.cmd == cmd {
				s.cmd = nil
			}
			s.mu.Unlock()
			logf.Close()
			log, _ := os.ReadFile(logName)
			if int64(len(log)) >= logStart {
				log = log[logStart:]
			}
			if strings.Contains(string(log), "could not bind") || strings.Contains(string(log), "could not create any TCP/IP sockets") {
				return fmt.Errorf("%w %d: %s", errBind, s.port, log)
			}
			return fmt.Errorf("pgtest: postgres exited at start: %s", log)
		case <-ctx.Done():
			s.Kill()
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("pgtest: postgres not accepting connections after 60s: %w", err)
		}
	}
}

// URL is the connection string of the server's postgres database.
func (s *Server) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
}

// Port is the TCP port the server listens on.
func (s *Server) Port() int { return s.port }

// Kill stops the server abruptly (SIGKILL), as a crash would, and waits for it to exit.
func (s *Server) Kill() { s.signal(syscall.SIGKILL) }

// Restart stops the server (fast shutdown, which ends every connection) and starts it
// again on the same port with the same data.
func (s *Server) Restart(ctx context.Context) error {
	s.Down()
	return s.Up(ctx)
}

// Down stops the server (fast shutdown, which ends every connection) and keeps its data;
// Up starts it again on the same port.
func (s *Server) Down() { s.signal(syscall.SIGINT) }

// Up starts a server stopped by Down, and waits until it accepts connections. Its port
// may still be held for a moment (another process may also have taken it meanwhile):
// a start that cannot bind it is tried again, a few times, a little later.
func (s *Server) Up(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		err := s.start(ctx)
		if err == nil || !errors.Is(err, errBind) || attempt == bindAttempts {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
		}
	}
}

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	cmd, exited, logf := s.cmd, s.exited, s.logf
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
	logf.Close()
}

// Stop shuts the server down and removes its files.
func (s *Server) Stop() {
	s.signal(syscall.SIGINT)
	s.removeDir()
}

func (s *Server) removeDir() { os.RemoveAll(s.dir) }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Database returns DATABASE_URL when it is set, and otherwise starts a temporary server.
// stop releases what it started (nothing for DATABASE_URL). temporary tells which it was.
func Database(ctx context.Context) (url string, stop func(), temporary bool, err error) {
	if u := os.Getenv("DATABASE_URL"); u != "" {
		return u, func() {}, false, nil
	}
	s, err := Start(ctx)
	if err != nil {
		return "", nil, false, err
	}
	return s.URL(), s.Stop, true, nil
}

// Name returns a random lower-case identifier with the given prefix, for the channel
// prefixes and tables that keep parallel tests apart (NOTIFY channels are database-wide).
func Name(prefix string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return strings.ToLower(prefix) + "_" + hex.EncodeToString(b)
}
