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
