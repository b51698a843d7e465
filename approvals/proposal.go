package approvals

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// Domain tags of the approval format (version 1). The proposal's signing
// bytes start with approvalTag; signatures are over a tag and the id.
const (
	approvalTag = "gridseal/approval/v1\x00"
	approveTag  = "gridseal/approval/v1/approve\x00"
	proposeTag  = "gridseal/approval/v1/propose\x00"
)

// Skew is the clock skew tolerated on an approval's window.
const Skew = 30 * time.Second

// Proposal is one exact state-changing command that approvers sign: the
// device, unit and request PDU byte for byte, under one policy version, in
// one time window, usable once.
type Proposal struct {
	PolicyID     string
	PolicyDigest [32]byte
	Device       string
	Unit         byte
	PDU          []byte
	NotBefore    time.Time
	NotAfter     time.Time
	Nonce        [16]byte
	Proposer     string
	MaxUses      uint8
}

// ID is a proposal's id: SHA-256 of its signing bytes.
type ID [32]byte

// String renders the id as hex.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// ParseID reads a hex id.
func ParseID(s string) (ID, error) {
	var id ID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("approval id %q: want 64 hex digits", s)
	}
	copy(id[:], b)
	return id, nil
}

// NewProposal binds pdu on (device, unit) to the policy p for ttl from now.
// It checks the PDU is a valid, state-changing request.
func NewProposal(p *policy.Policy, device string, unit byte, pdu []byte, ttl time.Duration, proposer string, now time.Time) (*Proposal, error) {
	if p.Device(device) == nil {
		return nil, fmt.Errorf("device %q is not in policy %s", device, p.ID)
	}
	req, err := modbus.ParseRequest(pdu)
	if err != nil {
		return nil, fmt.Errorf("request PDU %x: %w", pdu, err)
	}
	if !req.StateChanging() {
		return nil, fmt.Errorf("request PDU %x is a %s that changes nothing: only state-changing requests need approval", pdu, req.Class())
	}
	if ttl <= 0 || ttl > 24*time.Hour {
		return nil, fmt.Errorf("ttl %v: want up to 24h", ttl)
	}
	pr := &Proposal{PolicyID: p.ID, Device: device, Unit: unit, PDU: append([]byte(nil), pdu...),
		NotBefore: now.Truncate(time.Second), NotAfter: now.Add(ttl).Truncate(time.Second), Proposer: proposer, MaxUses: 1}
	digest, err := hex.DecodeString(p.Digest)
	if err != nil || len(digest) != 32 {
		return nil, errors.New("policy has no digest")
	}
	copy(pr.PolicyDigest[:], digest)
	if _, err := rand.Read(pr.Nonce[:]); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	return pr, nil
}

// SigningBytes is the proposal's canonical encoding: domain tag, then
// length-prefixed fields (lp8 policy id, 32-byte policy digest, lp8
// device, u8 unit, lp16 PDU, i64 not-before and not-after in unix
// seconds, 16-byte nonce, lp8 proposer, u8 max uses), big-endian.
func (p *Proposal) SigningBytes() []byte {
	b := make([]byte, 0, 128+len(p.PDU))
	b = append(b, approvalTag...)
	b = append(b, byte(len(p.PolicyID)))
	b = append(b, p.PolicyID...)
	b = append(b, p.PolicyDigest[:]...)
	b = append(b, byte(len(p.Device)))
	b = append(b, p.Device...)
	b = append(b, p.Unit)
	b = binary.BigEndian.AppendUint16(b, uint16(len(p.PDU)))
	b = append(b, p.PDU...)
	b = binary.BigEndian.AppendUint64(b, uint64(p.NotBefore.Unix()))
	b = binary.BigEndian.AppendUint64(b, uint64(p.NotAfter.Unix()))
	b = append(b, p.Nonce[:]...)
	b = append(b, byte(len(p.Proposer)))
	b = append(b, p.Proposer...)
	return append(b, p.MaxUses)
}

// ID returns SHA-256 of the signing bytes.
func (p *Proposal) ID() ID { return sha256.Sum256(p.SigningBytes()) }

// ErrProposal marks bytes that are not a valid proposal.
var ErrProposal = errors.New("invalid proposal")

// DecodeProposal parses signing bytes. It rejects anything that does not
// re-encode to exactly the same bytes.
func DecodeProposal(b []byte) (*Proposal, error) {
	bad := func(what string) (*Proposal, error) { return nil, fmt.Errorf("%w: %s", ErrProposal, what) }
	if len(b) < len(approvalTag) || string(b[:len(approvalTag)]) != approvalTag {
		return bad("domain tag")
	}
	r := b[len(approvalTag):]
	take := func(n int) []byte {
		if n > len(r) {
			r = nil
			return nil
		}
		out := r[:n]
		r = r[n:]
		return out
	}
	p := &Proposal{}
	lp8 := func() (string, bool) {
		l := take(1)
		if l == nil {
			return "", false
		}
		v := take(int(l[0]))
		return string(v), v != nil || l[0] == 0
	}
	var ok bool
	if p.PolicyID, ok = lp8(); !ok {
		return bad("policy id")
	}
	d := take(32)
	if d == nil {
		return bad("policy digest")
	}
	copy(p.PolicyDigest[:], d)
	if p.Device, ok = lp8(); !ok {
		return bad("device")
	}
	u := take(1)
	l := take(2)
	if u == nil || l == nil {
		return bad("unit or PDU length")
	}
	p.Unit = u[0]
	pdu := take(int(binary.BigEndian.Uint16(l)))
	if pdu == nil {
		return bad("PDU")
	}
	p.PDU = append([]byte(nil), pdu...)
	nb, na := take(8), take(8)
	nonce := take(16)
	if nb == nil || na == nil || nonce == nil {
		return bad("window or nonce")
	}
	p.NotBefore = time.Unix(int64(binary.BigEndian.Uint64(nb)), 0).UTC()
	p.NotAfter = time.Unix(int64(binary.BigEndian.Uint64(na)), 0).UTC()
	copy(p.Nonce[:], nonce)
	if p.Proposer, ok = lp8(); !ok {
		return bad("proposer")
	}
	mu := take(1)
	if mu == nil || len(r) != 0 {
		return bad("length")
	}
	p.MaxUses = mu[0]
	if p.MaxUses != 1 {
		return bad("max uses must be 1")
	}
	if !p.NotAfter.After(p.NotBefore) {
		return bad("window ends before it starts")
	}
	if _, err := modbus.ParseRequest(p.PDU); err != nil {
		return bad("PDU: " + err.Error())
	}
	return p, nil
}

// ErrFutureStart marks a proposal whose window starts more than Skew after
// it was first seen. Only a proposal written into the bucket by hand can be
// one (gridseal propose starts the window at once); it is refused for good,
// so that nobody collects signatures today for a command that becomes
// usable later, when those who signed no longer look.
var ErrFutureStart = errors.New("proposal starts in the future")

// CheckStart reports ErrFutureStart if p's window starts more than Skew
// after seen, the moment p was first seen (by a proxy's index or an
// approver's CLI).
func (p *Proposal) CheckStart(seen time.Time) error {
	if !p.NotBefore.After(seen.Add(Skew)) {
		return nil
	}
	return fmt.Errorf("%w: its window starts at %s, %v after it was first seen (%s), more than the %v skew allowed: refused for good (gridseal propose starts the window when it proposes)",
		ErrFutureStart, p.NotBefore.Format(time.RFC3339), p.NotBefore.Sub(seen).Round(time.Second), seen.UTC().Format(time.RFC3339), Skew)
}

// ApproveInput is what an approver signs for proposal id.
func ApproveInput(id ID) []byte { return append([]byte(approveTag), id[:]...) }

// ProposeInput is what the proposer signs for proposal id.
func ProposeInput(id ID) []byte { return append([]byte(proposeTag), id[:]...) }

// MatchKey groups proposals for one exact command: device, unit and PDU.
func MatchKey(device string, unit byte, pdu []byte) string {
	h := sha256.New()
	h.Write([]byte{byte(len(device))})
	h.Write([]byte(device))
	h.Write([]byte{unit})
	h.Write(pdu)
	return hex.EncodeToString(h.Sum(nil)[:12])
}

// Describe renders the command in words, for the approver's screen.
func (p *Proposal) Describe() string {
	req, err := modbus.ParseRequest(p.PDU)
	if err != nil {
		return fmt.Sprintf("PDU %x", p.PDU)
	}
	s := fmt.Sprintf("%s unit %d: %s (function %d)", p.Device, p.Unit, req.Function, req.Function)
	space, addr, qty, ok := req.WriteRange()
	if req.Function == modbus.Diagnostics {
		return s + fmt.Sprintf(" sub-function %d%s, data %x", req.Sub, diagnosticName(req.Sub), req.Data)
	}
	if !ok {
		return s + fmt.Sprintf(", PDU %x", p.PDU)
	}
	s += fmt.Sprintf(" %s %d", space, addr)
	if qty > 1 {
		s += fmt.Sprintf("..%d", int(addr)+int(qty)-1)
	}
	s += " ="
	for i := 0; i < int(qty); i++ {
		switch req.Function {
		case modbus.WriteSingleCoil, modbus.WriteMultipleCoils:
			if req.CoilValue(i) {
				s += " on"
			} else {
				s += " off"
			}
		case modbus.MaskWriteRegister:
			return s + fmt.Sprintf(" (AND %#04x, OR %#04x)", req.AndMask, req.OrMask)
		default:
			s += fmt.Sprintf(" %d", req.RegisterValue(i))
		}
	}
	return s
}

// diagnosticName names function 8's state-changing sub-functions.
func diagnosticName(sub uint16) string {
	switch sub {
	case 1:
		return " (restart communications)"
	case 3:
		return " (change ASCII input delimiter)"
	case 4:
		return " (force listen-only mode)"
	case 10:
		return " (clear counters and diagnostic register)"
	case 20:
		return " (clear overrun counter)"
	}
	return ""
}
