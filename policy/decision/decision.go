// Package decision is the vocabulary between the proxy and the policy: the
// request to decide (Input), the answer (Result) and why a request was
// denied (Denial).
//
// It is its own package so that the proxy can ask for decisions without
// importing the policy engine and what the engine needs (YAML, Tink keys,
// NATS). It imports only audit, protocols/modbus and the standard library,
// and must stay that way.
package decision

import (
	"net/netip"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// Denial says why a request was denied, so the proxy can pick the exception.
type Denial uint8

// Denial kinds.
const (
	DenyFunction Denial = iota + 1 // no rule allows this function (or class)
	DenyAddress                    // a rule allows the function, not this range or unit
	DenyValue                      // a rule allows the range, not these values
	DenyDevice                     // the device is not in the policy
	DenyApproval                   // a rule allows the command only with an m-of-n approval, and none holds
)

// String names the denial kind.
func (d Denial) String() string {
	switch d {
	case DenyFunction:
		return "function"
	case DenyAddress:
		return "address"
	case DenyValue:
		return "value"
	case DenyDevice:
		return "device"
	case DenyApproval:
		return "approval"
	}
	return "none"
}

// Input is one request to decide. The proxy keeps it in its per-request
// state and passes a pointer, so deciding does not allocate.
type Input struct {
	Op      uint64 // the proxy's operation id, recorded with a consumed approval
	Device  string
	Role    string // the client's Modbus/TCP Security role; empty on plain TCP
	Unit    byte
	Client  netip.AddrPort
	Request modbus.Request
}

// Result is the answer for one request.
type Result struct {
	Verdict audit.Verdict // audit.Allow or audit.Deny; the zero value allows nothing
	Denial  Denial        // set when Verdict is not audit.Allow
	Rule    string        // the rule that allowed (or nearly allowed) the request
	Reason  string        // human-readable; names the rule or what is missing
	Policy  string        // hex SHA-256 of the policy file that decided
	// Approval is the id of the approval consumed to allow the request.
	Approval   string
	Approvers  []string // who signed it
	BreakGlass bool     // allowed by the rule's break-glass quorum: flag loudly
	// Observed: allowed only because the device is in observe mode; the
	// rules deny it (Denial, Rule and Reason say how). Record it loudly.
	Observed bool
	// CandidateDiffers: the shadow candidate policy (if one is evaluated
	// beside the policy in force) decides the request otherwise; Reason
	// ends with what the candidate says. It changes nothing on the wire.
	CandidateDiffers bool
}

// Allowed reports whether the result allows the request. Anything but an
// explicit audit.Allow is a deny.
func (r *Result) Allowed() bool { return r.Verdict == audit.Allow }
