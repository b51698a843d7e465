// Package policy decides every Modbus request the proxy sees.
//
// A policy is a YAML file naming the devices behind the proxy (upstream
// address, unit ids) and, per device, the rules that allow reads, writes and
// diagnostics by function, address range and value range. Anything no rule
// allows is denied: unknown and diagnostic function codes included. The
// Engine answers each request with a decision.Result that names the rule or
// the reason, and the digest of the policy that decided it. A device in
// observe mode (commissioning) forwards what its rules deny, flagged
// Observed with the reason it would have been denied.
//
// The package holds the rules and their parsing (file.go, ranges.go,
// approvers.go), the engine (engine.go), signed policy bundles (bundle.go)
// and succession, which refuses rollbacks (succession.go), the Learner
// that builds a candidate policy from recorded requests (learn.go) and the
// replay that compares two policies on them (whatif.go). A rule that
// requires an m-of-n approval is decided through the Approvals interface
// declared here; package approvals implements it.
//
// policy must not import NATS or package approvals (approvals imports
// policy), so that deciding and parsing need no message bus.
package policy
