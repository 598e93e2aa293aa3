package wire

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// MaxNotifyPayload is the largest NOTIFY payload PostgreSQL accepts, in bytes. A payload of
// 8000 bytes or more fails with "payload string too long".
const MaxNotifyPayload = 7999

// Encoded is a message ready to publish: either an inline JSON notification, or a
// MessagePack body for the attachments table whose notification is a header naming the
// row (see AttachmentHeaderPrefix).
type Encoded struct {
	// JSON is the notification payload, when the message travels inline.
	JSON string
	// Attachment is the MessagePack encoding of the whole message, when it travels
	// through the attachments table; JSON is then empty.
	Attachment []byte
}

// EncodeInline is Encode, except that with inlineBinary a message that would become an
// attachment travels in the notification instead when it fits below threshold: its
// MessagePack body, base64-encoded, in an InlineHeaderPrefix notification. There is then
// no row to insert, read back or delete. Only pgadapter servers read such notifications:
// Node servers ignore them (their header names no namespace).
func EncodeInline(m *Message, threshold int, inlineBinary bool) (Encoded, error) {
	enc, err := Encode(m, threshold)
	if err != nil || !inlineBinary {
		return enc, err
	}
	return Inline(enc, m, threshold), nil
}

// Inline turns enc, m encoded by Encode, into the inline form EncodeInline gives when it
// is an attachment whose inline form fits below threshold; otherwise it returns enc. It
// lets a sender decide on inlining after encoding, only for the rare messages that need it.
func Inline(enc Encoded, m *Message, threshold int) Encoded {
	if enc.Attachment == nil {
		return enc
	}
	if threshold <= 0 || threshold > MaxNotifyPayload+1 {
		threshold = MaxNotifyPayload + 1
	}
	prefix := InlineHeaderPrefix(m.UID, m.Type)
	size := len(prefix) + base64.StdEncoding.EncodedLen(len(enc.Attachment)) + len(AttachmentHeaderSuffix)
	if size >= threshold {
		return enc
	}
	// Written into a strings.Builder through a small buffer on the stack, so that the
	// payload is allocated once, at its size, and becomes the string without a copy.
	var sb strings.Builder
	sb.Grow(size)
	sb.WriteString(prefix)
	var chunk [inlineChunk / 3 * 4]byte
	for body := enc.Attachment; len(body) > 0; {
		n := min(len(body), inlineChunk)
		base64.StdEncoding.Encode(chunk[:], body[:n])
		sb.Write(chunk[:base64.StdEncoding.EncodedLen(n)])
		body = body[n:]
	}
	sb.WriteString(AttachmentHeaderSuffix)
	return Encoded{JSON: sb.String()}
}

// inlineChunk is how many bytes of a body Inline encodes at a time: a multiple of 3, so
// that no chunk but the last is padded.
const inlineChunk = 768

// InlineHeaderPrefix returns the start of a notification carrying a message's MessagePack
// body inline: `{"uid":U,"type":T,"msgpack":"`, then the body in standard base64, then
// `"}` (AttachmentHeaderSuffix).
func InlineHeaderPrefix(uid string, typ Type) string {
	return OwnPrefix(uid) + `"type":` + strconv.Itoa(int(typ)) + `,"msgpack":"`
}

// Encode turns m into what goes on the wire. Messages whose data holds binary ([]byte)
// anywhere, and messages whose JSON text is threshold bytes or longer, become attachments,
// as Node does. threshold is capped at 8000 so that no inline payload can be refused by
// PostgreSQL.
func Encode(m *Message, threshold int) (Encoded, error) {
	if threshold <= 0 || threshold > MaxNotifyPayload+1 {
		threshold = MaxNotifyPayload + 1
	}
	var t map[string]any // the values' tree, when built already
	if d, ok := m.Data.(*BroadcastData); ok && d.Packet.Raw != "" && len(m.Caps) == 0 {
		// The arguments' text is there: write the envelope around it (no binary in text),
		// unless the text alone is too long already.
		if len(d.Packet.Raw) < threshold {
			bp := jsonBuffers.Get().(*[]byte)
			js := string(appendBroadcastJSON((*bp)[:0], m, d))
			jsonBuffers.Put(bp)
			if len(js) < threshold {
				return Encoded{JSON: js}, nil
			}
		}
	} else if t = m.tree(); !HasBinary(t["data"]) {
		// Arguments at normalize's depth bound, inside the message's envelope, are too
		// deep for JSON, not for MessagePack (see maxDepth): they go as an attachment,
		// as they would at their size anyway.
		js, err := marshalJSON(t)
		if err != nil && !errors.Is(err, errJSONDepth) {
			return Encoded{}, fmt.Errorf("wire: encode %s: %w", m.Type, err)
		}
		if err == nil && len(js) < threshold {
			return Encoded{JSON: js}, nil
		}
	}
	if t == nil {
		var err error
		if t, err = valueTree(m); err != nil {
			return Encoded{}, fmt.Errorf("wire: encode %s: %w", m.Type, err)
		}
	}
	hint := 512
	if d, ok := m.Data.(*BroadcastData); ok {
		hint += len(d.Packet.Raw) // the arguments' size, near enough, when known
	}
	body, err := marshalMsgpack(t, hint)
	if err != nil {
		return Encoded{}, fmt.Errorf("wire: encode %s attachment: %w", m.Type, err)
	}
	return Encoded{Attachment: body}, nil
}

// valueTree is m's tree with a broadcast's arguments as values, as MessagePack carries
// them: Data when the sender has it, else Raw decoded.
func valueTree(m *Message) (map[string]any, error) {
	d, ok := m.Data.(*BroadcastData)
	if !ok || d.Packet.Raw == "" {
		return m.tree(), nil
	}
	args, err := d.Packet.Args()
	if err != nil {
		return nil, err
	}
	c, cd := *m, *d
	cd.Packet.Data, cd.Packet.Raw = args, ""
	c.Data = &cd
	return c.tree(), nil
}

// EncodeJSON returns the JSON notification text of m, whatever its size or content. It is
// for tests and tools; publishers use Encode.
func EncodeJSON(m *Message) (string, error) { return marshalJSON(m.tree()) }

// EncodeMsgpack returns the MessagePack attachment body of m.
func EncodeMsgpack(m *Message) ([]byte, error) {
	t, err := valueTree(m)
	if err != nil {
		return nil, err
	}
	return marshalMsgpack(t, 512)
}

// AttachmentHeaderPrefix returns the start of the notification that announces an
// attachment: `{"uid":U,"type":T,"attachmentId":"`. The row id and `"}` complete it; the
// split lets a single SQL statement insert the row and notify with its id.
func AttachmentHeaderPrefix(uid string, typ Type) string {
	return OwnPrefix(uid) + `"type":` + strconv.Itoa(int(typ)) + `,"attachmentId":"`
}

// AttachmentHeaderSuffix completes AttachmentHeaderPrefix after the row id.
const AttachmentHeaderSuffix = `"}`

// NonceKey is the top-level key of a random string the emitter adds to payloads sent in
// a transaction, where PostgreSQL would keep one of equal notifications. Servers ignore
// it; the fast decoders skip it, so that such messages are not read the slow way.
const NonceKey = "nonce"

// SeqKey is the top-level key of a message's sequence number: a server's messages on a
// channel are numbered 1, 2, 3... in the order they are published (see AppendSeq), so
// that a receiver can tell, from a gap, how many it did not receive. PostgreSQL keeps no
// notification for a listener that is not connected, and loses the last ones committed
// before a fast shutdown: without the numbers those losses were silent. Node's servers
// ignore the key, and send none.
const SeqKey = "seq"

// SeqRoom is the most bytes AppendSeq adds to a payload: `"seq":`, 20 digits and a comma.
const SeqRoom = len(`"`+SeqKey+`":,`) + 20

// maxSeq is the largest sequence number a receiver takes: 2^53, the largest integer
// that JSON readers (Node's, and the generic decoder's float64) all read exactly.
const maxSeq = 1 << 53

// SeqThreshold returns the inline threshold, as Encode takes it, for messages that will
// be numbered: threshold, less the room for the number where the cap would otherwise
// leave none, so that a numbered payload still fits in a notification.
func SeqThreshold(threshold int) int {
	if threshold <= 0 || threshold > MaxNotifyPayload+1-SeqRoom {
		return MaxNotifyPayload + 1 - SeqRoom
	}
	return threshold
}

// AppendSeq appends to b payload, a JSON object as the codec writes it (or the prefix
// of an attachment header, AttachmentHeaderPrefix), with seq as its SeqKey. It goes
// where the payload stays recognisable as its sender's own when PostgreSQL echoes it:
// right after the uid for what begins with it (OwnPrefix), first for the rest (OwnSuffix).
func AppendSeq(b []byte, payload string, seq uint64) []byte {
	at := seqAt(payload)
	b = append(b, payload[:at]...)
	b = append(b, `"`+SeqKey+`":`...)
	b = strconv.AppendUint(b, seq, 10)
	if at < len(payload) && payload[at] != '}' {
		b = append(b, ',')
	}
	return append(b, payload[at:]...)
}

// WriteSeq is AppendSeq into a strings.Builder: a publisher numbers a batch's payloads
// into one, grown once to their size, whose string is then theirs without a copy.
func WriteSeq(sb *strings.Builder, payload string, seq uint64) {
	at := seqAt(payload)
	sb.WriteString(payload[:at])
	sb.WriteString(`"` + SeqKey + `":`)
	var digits [20]byte
	sb.Write(strconv.AppendUint(digits[:0], seq, 10))
	if at < len(payload) && payload[at] != '}' {
		sb.WriteByte(',')
	}
	sb.WriteString(payload[at:])
}

// seqAt returns where AppendSeq puts the number in payload.
func seqAt(payload string) int {
	if strings.HasPrefix(payload, `{"uid":"`) {
		if end := stringEnd(payload, len(`{"uid":`)); end > 0 && end < len(payload) && payload[end] == ',' {
			return end + 1
		}
	}
	return 1 // after the '{'
}

// stringEnd returns the index just past the JSON string that starts at s[i] (a quote),
// or -1 if it does not end.
func stringEnd(s string, i int) int {
	if i >= len(s) || s[i] != '"' {
		return -1
	}
	for i++; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}

// PeekSeq returns the sender and the sequence number of a payload numbered as AppendSeq
// numbers the codec's, without decoding it: for a notification a receiver drops unread
// (a full receive queue), so that it does not count it again as missed. ok is false for
// any other payload.
func PeekSeq(payload string) (uid string, seq uint64, ok bool) {
	const first, afterUID, uidKey = `{"` + SeqKey + `":`, `,"` + SeqKey + `":`, `,"uid":"`
	switch {
	case strings.HasPrefix(payload, first): // the uid is last (OwnSuffix)
		p := parser{s: payload, i: len(first)}
		if seq, ok = p.fastSeq(); !ok {
			return "", 0, false
		}
		i := strings.LastIndex(payload, uidKey)
		if i < 0 {
			return "", 0, false
		}
		q := parser{s: payload, i: i + len(uidKey) - 1}
		uid, ok = q.fastString()
		if !ok || q.i != len(payload)-1 || payload[q.i] != '}' {
			return "", 0, false
		}
		return uid, seq, true
	case strings.HasPrefix(payload, `{"uid":"`): // the number follows the uid (OwnPrefix)
		p := parser{s: payload, i: len(`{"uid":`)}
		if uid, ok = p.fastString(); !ok || !p.match(afterUID) {
			return "", 0, false
		}
		if seq, ok = p.fastSeq(); !ok {
			return "", 0, false
		}
		return uid, seq, true
	}
	return "", 0, false
}

// seqOf returns the sequence number v is, as the generic decoder reads it, or 0 for a
// value that is not one (which a receiver ignores, as it does a missing one).
func seqOf(v any) uint64 {
	f, ok := v.(float64)
	if !ok || f < 1 || f > maxSeq || f != math.Trunc(f) {
		return 0
	}
	return uint64(f)
}

// Notification is a decoded NOTIFY payload: a whole message, or the header of one that
// waits in the attachments table.
type Notification struct {
	UID  string
	Type Type
	// Seq is the message's number among its sender's messages on its channel (SeqKey);
	// 0 when it has none: Node's servers and the emitters send none.
	Seq uint64
	// Message is the decoded message when it travelled inline; nil for an attachment.
	Message *Message
	// AttachmentID is the attachments table row holding the message, when it is not
	// inline (HasAttachment).
	AttachmentID  int64
	HasAttachment bool
	// CreatedAt is the row's created_at, as the header of a pgadapter publisher gives it
	// ("createdAt"); zero when the header has none (Node's). A row id names one message
	// only until PostgreSQL crashes: the commits of the last moments before the crash
	// are lost, the advance of the id sequence with them (an unlogged attachments
	// table is emptied too), and a notification delivered before the crash can then name
	// a row made after it. A receiver compares the two, and reports the message of such a
	// notification missing instead of delivering another one.
	CreatedAt time.Time
}

// The header's created_at: its key, which follows the row id (createdAtKey ends the
// id's string and opens the time's), and its format, in UTC with microseconds, as
// PostgreSQL's to_char writes it (createdAtSQL) and as Go reads and writes it.
const (
	createdAtKey    = `","createdAt":"`
	createdAtSQL    = `YYYY-MM-DD"T"HH24:MI:SS.US"Z"`
	createdAtLayout = "2006-01-02T15:04:05.000000Z"
)

// AttachmentHeader is the notification InsertNotify publishes for row id of uid's
// message of type typ, created at created: what a receiver checks the row against.
func AttachmentHeader(uid string, typ Type, id int64, created time.Time) string {
	return AttachmentHeaderPrefix(uid, typ) + strconv.FormatInt(id, 10) + createdAtKey +
		created.UTC().Format(createdAtLayout) + AttachmentHeaderSuffix
}

// DecodeNotification parses a NOTIFY payload.
func DecodeNotification(payload string) (*Notification, error) {
	return decodeNotification(payload, false)
}

// DecodeNotificationRaw is DecodeNotification, except that a BROADCAST of the shape the
// codec and Node write has its arguments checked but not decoded: its Packet has Raw set
// and Data nil (see Packet.Args). A server that forwards them to its clients as they are
// then neither builds nor re-encodes them. Other messages are decoded in full.
func DecodeNotificationRaw(payload string) (*Notification, error) {
	return decodeNotification(payload, true)
}

func decodeNotification(payload string, keepRaw bool) (*Notification, error) {
	if payload == "" {
		return nil, errEmpty
	}
	if looksInline(payload) {
		if uid, typ, seq, b64, ok := inlineFast(payload); ok {
			return withSeq(decodeInline(uid, true, typ, true, b64))(seq)
		}
	}
	if keepRaw {
		if n, ok := decodeBroadcastFast(payload); ok {
			return n, nil
		}
	}
	raw, err := parseJSON(payload)
	if err != nil {
		return nil, fmt.Errorf("wire: notification is not JSON: %w", err)
	}
	t, ok := raw.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("wire: notification is %s, want a JSON object", describe(raw))
	}
	seq := seqOf(t[SeqKey])
	if b64, present := t["msgpack"]; present {
		text, ok := b64.(string)
		if !ok {
			return nil, fmt.Errorf("wire: inline msgpack is %s, want a base64 string", describe(b64))
		}
		uid, uidOK := t["uid"].(string)
		typ, typOK := asInt(t["type"])
		return withSeq(decodeInline(uid, uidOK, typ, typOK, text))(seq)
	}
	if a, present := t["attachmentId"]; present {
		n := &Notification{HasAttachment: true, Seq: seq}
		typ, ok := asInt(t["type"])
		if !ok || !Type(typ).Valid() {
			return nil, fmt.Errorf("wire: attachment header type is %s, want a message type", describe(t["type"]))
		}
		n.Type = Type(typ)
		if n.UID, ok = t["uid"].(string); !ok {
			return nil, fmt.Errorf("wire: attachment header uid is %s, want a string", describe(t["uid"]))
		}
		var err error
		switch id := a.(type) {
		case string:
			n.AttachmentID, err = strconv.ParseInt(id, 10, 64)
		case float64:
			n.AttachmentID = int64(id)
			if float64(n.AttachmentID) != id {
				err = fmt.Errorf("not an integer")
			}
		default:
			err = fmt.Errorf("it is %s", describe(a))
		}
		if err != nil || n.AttachmentID <= 0 {
			return nil, fmt.Errorf("wire: attachmentId %s is not a row id", describe(a))
		}
		if c, present := t["createdAt"]; present {
			text, ok := c.(string)
			if ok && text != "" {
				n.CreatedAt, err = time.Parse(createdAtLayout, text)
			}
			if !ok || err != nil {
				return nil, fmt.Errorf("wire: attachment header createdAt %s is not a time", describe(c))
			}
		}
		return n, nil
	}
	m, err := fromTree(t)
	if err != nil {
		return nil, err
	}
	return &Notification{UID: m.UID, Type: m.Type, Message: m, Seq: seq}, nil
}

// withSeq sets the sequence number of a notification decodeInline returns.
func withSeq(n *Notification, err error) func(seq uint64) (*Notification, error) {
	return func(seq uint64) (*Notification, error) {
		if n != nil {
			n.Seq = seq
		}
		return n, err
	}
}

// looksInline reports whether payload may be in the shape EncodeInline writes, whose
// "msgpack" key comes within the first bytes, so that other notifications do not pay for
// a second parse.
func looksInline(payload string) bool {
	head := payload[:min(len(payload), 128)] // room for a uid and a sequence number
	return strings.HasSuffix(payload, AttachmentHeaderSuffix) && strings.Contains(head, `"msgpack":"`)
}

// decodeInline decodes a notification with an inline MessagePack body (EncodeInline),
// whose header (uid and type, when present) must agree with the body.
func decodeInline(uid string, uidOK bool, typ int, typOK bool, text string) (*Notification, error) {
	body, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		return nil, fmt.Errorf("wire: inline msgpack: %w", err)
	}
	m, err := DecodeAttachment(body)
	if err != nil {
		return nil, fmt.Errorf("wire: inline msgpack: %w", err)
	}
	if !uidOK || !typOK || Type(typ) != m.Type || uid != m.UID {
		return nil, fmt.Errorf("wire: inline message header (uid %q, type %d) does not match its body (uid %q, type %s)", uid, typ, m.UID, m.Type)
	}
	return &Notification{UID: m.UID, Type: m.Type, Message: m}, nil
}

// DecodeAttachment parses the MessagePack body of an attachment row. Numbers are turned
// into what JSON decoding gives (float64, or int64 and uint64 beyond ±2^53: see
// intValue), so that a value reads the same whichever way it travelled.
func DecodeAttachment(body []byte) (*Message, error) {
	if len(body) == 0 {
		return nil, errEmpty
	}
	if v, ok := decodeMsgpackTree(body); ok {
		if t, ok := v.(map[string]any); ok {
			return fromTree(t)
		}
	}
	// The library's decoder, for what the direct one does not take, and for its errors.
	return decodeAttachmentLib(body)
}

// decodeAttachmentLib is DecodeAttachment through vmihailenco/msgpack.
func decodeAttachmentLib(body []byte) (*Message, error) {
	if err := validateMsgpack(body); err != nil {
		return nil, fmt.Errorf("wire: attachment is not valid MessagePack: %w", err)
	}
	dec := msgpack.NewDecoder(bytes.NewReader(body))
	v, err := dec.DecodeInterface()
	if err != nil {
		return nil, fmt.Errorf("wire: attachment is not MessagePack: %w", err)
	}
	if _, err := dec.PeekCode(); err == nil {
		return nil, fmt.Errorf("wire: attachment has trailing data after the message")
	}
	v, err = fromMsgpack(v)
	if err != nil {
		return nil, fmt.Errorf("wire: attachment: %w", err)
	}
	t, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("wire: attachment is %s, want a map", describe(v))
	}
	return fromTree(t)
}

// marshalJSON writes v as encoding/json with SetEscapeHTML(false) would (fewer bytes; the
// payload is never embedded in HTML).
func marshalJSON(v any) (string, error) {
	bp := jsonBuffers.Get().(*[]byte)
	defer jsonBuffers.Put(bp)
	b, err := appendJSON((*bp)[:0], v, 0)
	if err != nil {
		return "", err
	}
	if cap(b) <= 64<<10 {
		*bp = b // keep the grown buffer, unless a rare huge message grew it
	}
	return string(b), nil
}

// jsonBuffers recycles marshalJSON's buffers: one server encodes every message it
// publishes.
var jsonBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// marshalMsgpack encodes t into a buffer of hint bytes to begin with.
func marshalMsgpack(t map[string]any, hint int) ([]byte, error) {
	if b, ok := appendMsgpack(make([]byte, 0, hint), t, 0); ok {
		return b, nil
	}
	return marshalMsgpackLib(t)
}

// marshalMsgpackLib is marshalMsgpack through vmihailenco/msgpack, for trees holding
// other types (structs in a handshake, say).
func marshalMsgpackLib(t map[string]any) ([]byte, error) {
	var b bytes.Buffer
	enc := msgpack.NewEncoder(&b)
	enc.UseCompactInts(true)
	enc.UseCompactFloats(true)
	enc.SetCustomStructTag("json")
	if err := enc.Encode(t); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// fromMsgpack turns the decoder's output into the tree JSON decoding gives: numbers as
// float64, maps with string keys.
func fromMsgpack(v any) (any, error) {
	switch x := v.(type) {
	case int8:
		return float64(x), nil
	case int16:
		return float64(x), nil
	case int32:
		return float64(x), nil
	case int64:
		return intValue(x), nil
	case uint8:
		return float64(x), nil
	case uint16:
		return float64(x), nil
	case uint32:
		return float64(x), nil
	case uint64:
		return uintValue(x), nil
	case float32:
		return floatValue(float64(x)), nil
	case float64:
		return floatValue(x), nil
	case time.Time: // a JavaScript Date, from Node
		return jsDate(x), nil
	case []any:
		for i := range x {
			var err error
			if x[i], err = fromMsgpack(x[i]); err != nil {
				return nil, err
			}
		}
		return x, nil
	case map[string]any:
		for k, e := range x {
			var err error
			if x[k], err = fromMsgpack(e); err != nil {
				return nil, err
			}
		}
		return x, nil
	case map[any]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			ks, ok := k.(string)
			if !ok {
				return nil, fmt.Errorf("map key is %s, want a string", describe(k))
			}
			var err error
			if out[ks], err = fromMsgpack(e); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return v, nil
}
