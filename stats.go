package pgadapter

import (
	"sync/atomic"

	"github.com/socketio-pg/pgadapter/internal/wire"
)

// Stats is a snapshot of what a Builder has done since it was made. Counting costs an
// atomic add per message: cheap enough to leave on.
type Stats struct {
	// Published counts messages committed, by type name ("BROADCAST", "HEARTBEAT", ...).
	Published map[string]int64
	// Received counts messages from other servers and emitters that were decoded, by
	// type name.
	Received map[string]int64
	// Transactions counts the transactions that published messages. Published, summed,
	// over Transactions is how many messages share a transaction: how well the
	// publisher batches, which is where a cluster's throughput comes from (PostgreSQL
	// serialises the commits of NOTIFY). Near 1 while messages come slower than a round
	// trip each; up to 256 under load.
	Transactions int64
	// PublishedBytes counts the NOTIFY payloads of messages published inline and the
	// attachment bodies written (not their header notifications).
	PublishedBytes int64
	// ReceivedBytes counts every NOTIFY payload received from another server and the
	// attachment bodies read.
	ReceivedBytes int64
	// AttachmentsWritten counts rows inserted into the attachments table.
	AttachmentsWritten int64
	// AttachmentsRead counts rows read from the attachments table.
	AttachmentsRead int64
	// AttachmentQueries counts the queries that read attachments: those whose
	// notifications arrive together are read by one.
	AttachmentQueries int64
	// AttachmentsPutOff counts attachment rows read and dropped, to be read again later,
	// because the rows read and not yet applied held as much memory as a server lets
	// them: twice MaxAttachmentSize, and 64 MiB at least. Rows keep their messages'
	// order; a count that grows means messages arrive faster than the application
	// applies them.
	AttachmentsPutOff int64
	// AttachmentRereads counts reads of attachment rows made again on another connection
	// because PostgreSQL ended the one they were made on (idle_session_timeout,
	// pg_terminate_backend, a restart), for the rows not handed over yet: one per read
	// made again. AttachmentQueries does not count them.
	AttachmentRereads int64
	// PublishErrors counts messages lost because their publication failed, or because
	// they could not be encoded, and the application's operations that a closed adapter
	// did not publish (a dynamic namespace's, emptied, still used): broadcasts and room
	// changes. ServerSideEmit returns ErrClosed instead, with an acknowledgement too, and
	// FetchSockets gives it to its callback, uncounted (a broadcast with
	// acknowledgements ends at its timeout, with an error).
	PublishErrors int64
	// QueueFull counts messages refused because the publish queue was full.
	QueueFull int64
	// ReceiveDrops counts notifications dropped because the receive queue was full:
	// other servers' messages, and this server's own echoes (which it would have
	// skipped), so that its count of another server's messages received, missed and
	// dropped can exceed what that server published by the echoes dropped.
	ReceiveDrops int64
	// Missed counts messages of other servers that never reached this one, told by gaps
	// in the numbers each server gives its messages on a namespace (see MissedError):
	// committed while this server's LISTEN connection was down, or lost by PostgreSQL
	// around a restart. ReceiveDrops are not counted again.
	Missed int64
	// Malformed counts notifications and attachments that could not be used: that could
	// not be decoded, or were refused once decoded (a namespace that does not match its
	// channel, an attachment row that does not match its notification).
	Malformed int64
	// AttachmentErrors counts messages lost because their attachment row could not be
	// read: gone or replaced (ErrAttachmentMissing), larger than MaxAttachmentSize
	// (ErrAttachmentTooLarge), or the query failed.
	AttachmentErrors int64
	// Panics counts panics recovered in the adapter's goroutines (see PanicError).
	Panics int64
	// ListenerConnects counts LISTEN connections that came up with every channel
	// listened: 1, plus one per reconnection.
	ListenerConnects int64
	// ListenerUp reports whether the LISTEN connection is up with every channel listened.
	ListenerUp bool
	// Nodes gives, per namespace, how many other servers are known.
	Nodes map[string]int
}

// counters are the Builder's statistics.
type counters struct {
	published, received               [int(wire.AllRoomsResponse) + 1]atomic.Int64
	publishedBytes, receivedBytes     atomic.Int64
	transactions                      atomic.Int64
	attachmentsWritten, attachmentsRd atomic.Int64
	attachmentQueries                 atomic.Int64
	attachmentsPutOff                 atomic.Int64
	attachmentRereads                 atomic.Int64
	publishErrors, malformed, panics  atomic.Int64
	missed                            atomic.Int64
	attachmentErrors                  atomic.Int64
	listenerConnects                  atomic.Int64
	listenerUp                        atomic.Bool
}

func countType(arr *[int(wire.AllRoomsResponse) + 1]atomic.Int64, t wire.Type) {
	if int(t) >= 0 && int(t) < len(arr) {
		arr[t].Add(1)
	}
}

// Stats returns a snapshot of the Builder's counters.
func (b *Builder) Stats() Stats {
	b.init()
	s := Stats{
		Published: map[string]int64{}, Received: map[string]int64{}, Nodes: map[string]int{},
		Transactions:   b.stats.transactions.Load(),
		PublishedBytes: b.stats.publishedBytes.Load(), ReceivedBytes: b.stats.receivedBytes.Load(),
		AttachmentsWritten: b.stats.attachmentsWritten.Load(), AttachmentsRead: b.stats.attachmentsRd.Load(),
		AttachmentQueries: b.stats.attachmentQueries.Load(), AttachmentsPutOff: b.stats.attachmentsPutOff.Load(),
		AttachmentRereads: b.stats.attachmentRereads.Load(),
		PublishErrors:     b.stats.publishErrors.Load(), AttachmentErrors: b.stats.attachmentErrors.Load(), QueueFull: b.queueFull.n.Load(), ReceiveDrops: b.drops.n.Load(),
		Missed:    b.stats.missed.Load(),
		Malformed: b.stats.malformed.Load(), Panics: b.stats.panics.Load(), ListenerConnects: b.stats.listenerConnects.Load(),
		ListenerUp: b.stats.listenerUp.Load(),
	}
	for i := range b.stats.published {
		if n := b.stats.published[i].Load(); n > 0 {
			s.Published[wire.Type(i).String()] = n
		}
		if n := b.stats.received[i].Load(); n > 0 {
			s.Received[wire.Type(i).String()] = n
		}
	}
	for _, a := range b.snapshot() {
		s.Nodes[a.name] = a.knownServers() // not ServerCount, which takes a call due to a broadcast with acks
	}
	return s
}
