// Package approvals holds gridseal's m-of-n approvals of single commands:
// the proposal format and its id (proposal.go), the JetStream key-value
// store that keeps proposals, signatures and each approval's single use
// (store.go), and quorum counting — whose signatures count under a policy's
// rule (quorum.go). Use (gate.go) hands a policy.Engine what it needs to
// allow the commands a rule gates behind a quorum. command.go is what the
// CLI needs of them: the command a proposal names from propose's specs
// (ParseWrite), the approver of a key, an id from a prefix, and an
// approval or a list of them as text.
//
// approvals imports policy, never the reverse. The proxy must not import
// approvals: it pulls in NATS.
package approvals
