package keys

import "encoding/binary"

// SignatureKeyID returns the Tink key id that a signature's 5-byte output
// prefix (version byte 1, then the big-endian key id) names. It reports
// false for a signature without that prefix. The id only says which key to
// try: it proves nothing until the signature verifies.
func SignatureKeyID(sig []byte) (uint32, bool) {
	if len(sig) < 5 || sig[0] != 1 {
		return 0, false
	}
	return binary.BigEndian.Uint32(sig[1:5]), true
}
