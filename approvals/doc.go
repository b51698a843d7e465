// Package approvals holds gridseal's m-of-n approvals of single commands:
// the proposal format and its id (proposal.go), the JetStream key-value
// store that keeps proposals, signatures and each approval's single use
// (store.go), and quorum counting — whose signatures count under a policy's
// rule (quorum.go). Use (gate.go) hands a policy.Engine what it needs to
// allow the commands a rule gates behind a quorum.
//
// approvals imports policy, never the reverse. The proxy must not import
// approvals: it pulls in NATS.
package approvals
