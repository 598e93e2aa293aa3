package pgadapter

import (
	"context"
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/socketio-pg/pgadapter/fastws"
	"github.com/socketio-pg/pgadapter/internal/pgtest"
)

// dbURL is the PostgreSQL every test of this package uses: DATABASE_URL, or a temporary
// server started for this test binary.
var dbURL string

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		runChild()
		return
	}
	if os.Getenv("PGADAPTER_TEST_FASTWS") == "1" {
		// The whole suite again, with clients on the fastws transport (see .ci/run).
		fastws.Install()
	}
	url, stop, temporary, err := pgtest.Database(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if temporary {
		fmt.Fprintln(os.Stderr, "pgadapter tests: DATABASE_URL unset, using a temporary PostgreSQL at", url)
	}
	dbURL = url
	// What runs before the tests (the client and server libraries start goroutines of
	// their own when loaded) is not theirs to leak.
	ignore := goleak.IgnoreCurrent()
	code := m.Run()
	stop()
	if code == 0 {
		if err := goleak.Find(ignore); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
