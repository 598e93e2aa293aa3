package wire

import (
	"unicode/utf8"
)

// ASCIIServerEncoding reports whether a notification to a database of this
// server_encoding must be ASCII: PostgreSQL converts a payload from the client's encoding
// to the server's, and refuses one with a character the server's cannot hold (an emoji in
// EUC_JP or LATIN1, Japanese in LATIN1). UTF8 holds every character, and SQL_ASCII does
// no conversion. An unknown encoding ("") is taken as UTF8.
func ASCIIServerEncoding(enc string) bool {
	return enc != "" && enc != "UTF8" && enc != "SQL_ASCII"
}

// ASCIIConnection reports whether what is sent on a connection with these
// ParameterStatus values must be ASCII: the database cannot hold every character
// (ASCIIServerEncoding), or the connection speaks another encoding than UTF-8, from
// which PostgreSQL would convert Go's UTF-8 bytes as if they were in it.
func ASCIIConnection(serverEncoding, clientEncoding string) bool {
	return ASCIIServerEncoding(serverEncoding) || clientEncoding != "" && clientEncoding != "UTF8"
}

// IsASCII reports whether s holds only ASCII bytes.
func IsASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// EscapeNonASCII returns the JSON text js with every character outside ASCII written as
// a \u escape (two, a surrogate pair, beyond the Basic Multilingual Plane), which every
// JSON reader decodes to the same string; js itself when it is ASCII already. Outside
// strings JSON has only ASCII, so the escapes fall inside strings. Invalid UTF-8 becomes
// U+FFFD, as encoding/json writes it.
func EscapeNonASCII(js string) string {
	if IsASCII(js) {
		return js
	}
	b := make([]byte, 0, len(js)+len(js)/2)
	const hex = "0123456789abcdef"
	u := func(r rune) {
		b = append(b, '\\', 'u', hex[r>>12&0xf], hex[r>>8&0xf], hex[r>>4&0xf], hex[r&0xf])
	}
	for i := 0; i < len(js); {
		c := js[i]
		if c < utf8.RuneSelf {
			b = append(b, c)
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(js[i:])
		i += size
		if r > 0xffff {
			r -= 0x10000
			u(0xd800 + r>>10)
			u(0xdc00 + r&0x3ff)
		} else {
			u(r)
		}
	}
	return string(b)
}

// ASCII returns enc, m encoded by Encode, as a database whose encoding cannot hold every
// character needs it (see ASCIIServerEncoding): its JSON escaped to ASCII, or, when the
// escapes take it to threshold bytes or more, the message as an attachment, whose row is
// bytes and needs no conversion.
func ASCII(enc Encoded, m *Message, threshold int) (Encoded, error) {
	if enc.Attachment != nil || IsASCII(enc.JSON) {
		return enc, nil
	}
	if threshold <= 0 || threshold > MaxNotifyPayload+1 {
		threshold = MaxNotifyPayload + 1
	}
	if js := EscapeNonASCII(enc.JSON); len(js) < threshold {
		return Encoded{JSON: js}, nil
	}
	t, err := valueTree(m)
	if err != nil {
		return Encoded{}, err
	}
	hint := len(enc.JSON) + 64
	body, err := marshalMsgpack(t, hint)
	if err != nil {
		return Encoded{}, err
	}
	return Encoded{Attachment: body}, nil
}
