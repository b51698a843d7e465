package approvals

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// ParseWrite builds the request PDU of a command to propose from exactly
// one of gridseal propose's specs, which its errors name: registers
// ("ADDRESS=VALUE[,VALUE…]": function 6 for one value, 16 for several),
// coil ("ADDRESS=on|off": function 5) or pduHex (any request, in hex).
func ParseWrite(registers, coil, pduHex string) ([]byte, error) {
	n := 0
	for _, s := range []string{registers, coil, pduHex} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return nil, errors.New("give exactly one of --write-register A=V[,V…], --write-coil A=on|off, --pdu HEX")
	}
	split := func(s, flag string) (uint16, string, error) {
		a, v, ok := strings.Cut(s, "=")
		if !ok {
			return 0, "", fmt.Errorf("%s %q: want ADDRESS=VALUE", flag, s)
		}
		addr, err := strconv.ParseUint(strings.TrimSpace(a), 0, 16)
		if err != nil {
			return 0, "", fmt.Errorf("%s: address %q is not 0..65535", flag, a)
		}
		return uint16(addr), v, nil
	}
	switch {
	case registers != "":
		addr, vs, err := split(registers, "--write-register")
		if err != nil {
			return nil, err
		}
		var vals []uint16
		for _, v := range strings.Split(vs, ",") {
			x, err := strconv.ParseInt(strings.TrimSpace(v), 0, 32)
			if err != nil || x < -32768 || x > 65535 {
				return nil, fmt.Errorf("--write-register: value %q is not -32768..65535", v)
			}
			vals = append(vals, uint16(x))
		}
		if len(vals) == 1 {
			return modbus.AppendWriteSingleRegister(nil, addr, vals[0]), nil
		}
		if len(vals) > modbus.MaxWriteRegisters {
			return nil, fmt.Errorf("--write-register: at most %d values", modbus.MaxWriteRegisters)
		}
		return modbus.AppendWriteMultipleRegisters(nil, addr, vals), nil
	case coil != "":
		addr, v, err := split(coil, "--write-coil")
		if err != nil {
			return nil, err
		}
		switch strings.ToLower(v) {
		case "on", "1", "true":
			return modbus.AppendWriteSingleCoil(nil, addr, true), nil
		case "off", "0", "false":
			return modbus.AppendWriteSingleCoil(nil, addr, false), nil
		}
		return nil, fmt.Errorf("--write-coil: value %q: want on or off", v)
	}
	pdu, err := hex.DecodeString(strings.ReplaceAll(pduHex, " ", ""))
	if err != nil {
		return nil, fmt.Errorf("--pdu: %q is not hex", pduHex)
	}
	if _, err := modbus.ParseRequest(pdu); err != nil {
		return nil, fmt.Errorf("--pdu %x: %v", pdu, err)
	}
	return pdu, nil
}

// ApproverSigner loads the private keyset at path and names its approver
// in pol.
func ApproverSigner(pol *policy.Policy, path string) (*keys.Signer, string, error) {
	s, err := keys.LoadSigner(path)
	if err != nil {
		return nil, "", err
	}
	a := pol.ApproverForKey(s.KeyID)
	if a == nil {
		return nil, "", fmt.Errorf("key %d (%s) belongs to no approver of policy %s", s.KeyID, filepath.Base(path), pol.ID)
	}
	return s, a.Name, nil
}

// ErrBadID marks an approval id prefix that names no one approval: too
// short to look up, or shared by several.
var ErrBadID = errors.New("approval id")

// Resolve returns the approval a full id or a unique prefix of at least 8
// hex digits names, as `approvals list` prints them.
func (s *Store) Resolve(ctx context.Context, prefix string) (ID, error) {
	if len(prefix) == 64 {
		return ParseID(prefix)
	}
	if len(prefix) < 8 {
		return ID{}, fmt.Errorf("%w %q: give at least 8 hex digits", ErrBadID, prefix)
	}
	all, err := s.List(ctx)
	if err != nil {
		return ID{}, err
	}
	var found []ID
	for _, st := range all {
		if strings.HasPrefix(st.ID.String(), strings.ToLower(prefix)) {
			found = append(found, st.ID)
		}
	}
	switch len(found) {
	case 0:
		return ID{}, fmt.Errorf("%w: %s", ErrNotFound, prefix)
	case 1:
		return found[0], nil
	}
	return ID{}, fmt.Errorf("%w prefix %q matches %d approvals: give more digits", ErrBadID, prefix, len(found))
}

// WriteText writes st decoded for a human, as pol counts its signatures
// at now: the command, its window and policy, its status and the
// signatures not counted, and why.
func (st *Stored) WriteText(w io.Writer, pol *policy.Policy, now time.Time) {
	pr := st.Proposal
	ev := Evaluate(pol, st, now)
	fmt.Fprintf(w, "approval %s\n  command   %s\n  PDU       %x\n  proposer  %s\n  window    %s to %s\n  policy    %s %x…\n  status    %s\n",
		st.ID, pr.Describe(), pr.PDU, pr.Proposer, pr.NotBefore.Local().Format(time.RFC3339), pr.NotAfter.Local().Format(time.RFC3339),
		pr.PolicyID, pr.PolicyDigest[:6], ev.Summary())
	if ev.Rule != nil {
		fmt.Fprintf(w, "  rule      %s\n", ev.Rule.Name)
	}
	for _, why := range ev.Ignored {
		fmt.Fprintf(w, "  not counted: %s\n", why)
	}
}

// WriteList writes approvals as a table, one a row, each with its state
// as pol counts it at now (READY: one that can be used).
func WriteList(w io.Writer, pol *policy.Policy, all []*Stored, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCOMMAND\tPROPOSER\tUNTIL\tSTATE")
	for _, st := range all {
		ev := Evaluate(pol, st, now)
		state := ev.Summary()
		if ev.Usable() {
			state = "READY: " + state
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", st.ID.String()[:16], st.Proposal.Describe(), st.Proposal.Proposer,
			st.Proposal.NotAfter.Local().Format("01-02 15:04"), state)
	}
	return tw.Flush()
}

// Proposed is what ProposeCommand stored: the proposal, its id, who
// proposed it and the rule whose quorum it needs.
type Proposed struct {
	ID       ID
	Proposal *Proposal
	Proposer string
	Rule     *policy.Rule
}

// ProposeCommand is gridseal propose: the approver whose private keyset
// is at keyPath proposes pdu to device's unit, valid for ttl from now, and
// signs the proposal. It refuses a command no rule of pol requires a
// quorum for, and a ttl longer than that rule allows (ErrTTL).
func ProposeCommand(ctx context.Context, s *Store, pol *policy.Policy, device string, unit byte, pdu []byte, ttl time.Duration, keyPath string) (*Proposed, error) {
	signer, proposer, err := ApproverSigner(pol, keyPath)
	if err != nil {
		return nil, err
	}
	pr, err := NewProposal(pol, device, unit, pdu, ttl, proposer, time.Now())
	if err != nil {
		return nil, err
	}
	rule, err := ApprovalRule(pol, device, unit, pdu)
	if err != nil {
		return nil, err
	}
	if rule.Requires == nil {
		return nil, fmt.Errorf("rule %s already allows this command without approval", rule.Name)
	}
	if ttl > rule.MaxTTL {
		return nil, fmt.Errorf("%w %v is longer than rule %s allows (%v)", ErrTTL, ttl, rule.Name, rule.MaxTTL)
	}
	sig, err := signer.Sign(ProposeInput(pr.ID()))
	if err != nil {
		return nil, err
	}
	id, err := s.Propose(ctx, pr, sig)
	if err != nil {
		return nil, err
	}
	return &Proposed{ID: id, Proposal: pr, Proposer: proposer, Rule: rule}, nil
}

// ErrTTL marks a proposal asked to stay valid longer than its rule allows.
var ErrTTL = errors.New("--ttl")

// SignCommand is gridseal approve: it shows approval id on w as it
// stands, checks it can be signed (not used, its proposal verified, not
// the proposer's own), asks confirm (nil: do not ask), and adds the
// signature of the approver whose private keyset is at keyPath. It
// returns who signed and the approval's state after.
func SignCommand(ctx context.Context, s *Store, pol *policy.Policy, id ID, keyPath string, w io.Writer, confirm func(who string) bool) (string, Evaluation, error) {
	signer, who, err := ApproverSigner(pol, keyPath)
	if err != nil {
		return "", Evaluation{}, err
	}
	st, err := s.Get(ctx, id)
	if err != nil {
		return "", Evaluation{}, err
	}
	st.WriteText(w, pol, time.Now())
	if st.Entry.Consumed != nil {
		return "", Evaluation{}, ErrConsumed
	}
	if err := VerifyProposal(pol, st); err != nil {
		return "", Evaluation{}, fmt.Errorf("not signed: approval %s…: %w", id.String()[:16], err)
	}
	if who == st.Proposal.Proposer {
		return "", Evaluation{}, fmt.Errorf("%s proposed this command: the proposer's signature never counts toward its quorum", who)
	}
	if confirm != nil && !confirm(who) {
		return "", Evaluation{}, errors.New("not signed: approval not confirmed")
	}
	sig, err := signer.Sign(ApproveInput(id))
	if err != nil {
		return "", Evaluation{}, err
	}
	if st, err = s.AddSignature(ctx, id, sig); err != nil {
		return "", Evaluation{}, err
	}
	return who, Evaluate(pol, st, time.Now()), nil
}
