package policy

import (
	"bytes"
	"fmt"
	"strconv"
	"time"

	"github.com/tink-crypto/tink-go/v2/keyset"
	"gopkg.in/yaml.v3"

	"github.com/gridseal/gridseal/internal/keys"
)

// Approver is a person who may sign approvals, with the public keyset their
// signatures verify against and the groups they belong to.
type Approver struct {
	Name     string
	Groups   []string
	verifier *keys.Verifier
}

// Quorum is how many distinct approvers of a group an approval needs.
type Quorum struct {
	Group string
	M     int
}

// parseApprovers reads the top-level approvers list. Each approver's
// keyset is the public Tink keyset JSON, inline, so that the policy digest
// covers it.
func parseApprovers(p *Policy, n *yaml.Node) error {
	if n.Kind != yaml.SequenceNode {
		return lineErr(n, "approvers must be a list")
	}
	p.approvers = map[string]*Approver{}
	p.keyIndex = map[uint32]*Approver{}
	for _, an := range n.Content {
		f, err := fields(an, "approver", "name", "groups", "keyset")
		if err != nil {
			return err
		}
		a := &Approver{}
		if f["name"] == nil {
			return lineErr(an, "approver without a name")
		}
		if a.Name, err = scalar(f["name"], "name"); err != nil {
			return err
		}
		if !namePattern.MatchString(a.Name) {
			return lineErr(f["name"], "approver name %q: use lower-case letters, digits, '.', '_' or '-'", a.Name)
		}
		if _, dup := p.approvers[a.Name]; dup {
			return lineErr(an, "approver %q defined twice", a.Name)
		}
		if g := f["groups"]; g != nil {
			if err := g.Decode(&a.Groups); err != nil {
				return lineErr(g, "approver %q: groups must be a list of names", a.Name)
			}
		}
		kn := f["keyset"]
		if kn == nil {
			return lineErr(an, "approver %q: missing keyset (the public keyset JSON from gridseal keys new)", a.Name)
		}
		h, err := keyset.ReadWithNoSecrets(keyset.NewJSONReader(bytes.NewReader([]byte(kn.Value))))
		if err != nil {
			return lineErr(kn, "approver %q: keyset is not a Tink public keyset: %v", a.Name, err)
		}
		if a.verifier, err = keys.VerifierFromHandle(h); err != nil {
			return lineErr(kn, "approver %q: %v", a.Name, err)
		}
		for id := range a.verifier.KeyIDs {
			if other, dup := p.keyIndex[id]; dup {
				return lineErr(kn, "approver %q: key id %d already belongs to %q", a.Name, id, other.Name)
			}
			p.keyIndex[id] = a
		}
		p.approvers[a.Name] = a
		p.Approvers = append(p.Approvers, a)
	}
	return nil
}

func parseRevoked(p *Policy, n *yaml.Node) error {
	var ids []uint32
	if err := n.Decode(&ids); err != nil {
		return lineErr(n, "revoked_keys must be a list of Tink key ids")
	}
	p.revoked = map[uint32]bool{}
	for _, id := range ids {
		p.revoked[id] = true
	}
	return nil
}

// parseQuorum reads {group: g, m: 2}.
func parseQuorum(n *yaml.Node, where string) (Quorum, error) {
	f, err := fields(n, where, "group", "m")
	if err != nil {
		return Quorum{}, err
	}
	var q Quorum
	if f["group"] != nil {
		q.Group = f["group"].Value
	}
	if f["m"] == nil {
		return q, lineErr(n, "%s: missing m (how many distinct approvers)", where)
	}
	m, err := strconv.Atoi(f["m"].Value)
	if err != nil || m < 1 || m > 32 {
		return q, lineErr(f["m"], "%s: m must be 1..32", where)
	}
	q.M = m
	return q, nil
}

// checkQuorums verifies that every rule's group exists and can reach m.
func checkQuorums(p *Policy) error {
	for _, d := range p.Devices {
		for _, r := range d.Rules {
			if r.Requires == nil {
				continue
			}
			n := p.groupSize(r.Requires.Group)
			if n == 0 {
				return &lineError{Line: r.Line, Msg: fmt.Sprintf("device %q rule %q: unknown approver group %q", d.Name, r.Name, r.Requires.Group)}
			}
			// The proposer never counts, so a group needs m+1 members
			// for a proposal from inside it; m members from outside.
			if n < r.Requires.M {
				return &lineError{Line: r.Line, Msg: fmt.Sprintf("device %q rule %q: group %q has %d approvers, fewer than m=%d",
					d.Name, r.Name, r.Requires.Group, n, r.Requires.M)}
			}
			if r.BreakGlass != nil && r.BreakGlass.M >= r.Requires.M {
				return &lineError{Line: r.Line, Msg: fmt.Sprintf("device %q rule %q: break_glass m=%d must be below the rule's m=%d",
					d.Name, r.Name, r.BreakGlass.M, r.Requires.M)}
			}
		}
	}
	return nil
}

func (p *Policy) groupSize(g string) int {
	n := 0
	for _, a := range p.Approvers {
		for _, x := range a.Groups {
			if x == g {
				n++
				break
			}
		}
	}
	return n
}

// InGroup reports whether a belongs to group g.
func (a *Approver) InGroup(g string) bool {
	for _, x := range a.Groups {
		if x == g {
			return true
		}
	}
	return false
}

// Verify checks sig over data against a's keyset.
func (a *Approver) Verify(sig, data []byte) error { return a.verifier.Verify(sig, data) }

// Revoked reports whether the policy revokes Tink key id: a signature by it
// counts for nothing, whoever it belongs to.
func (p *Policy) Revoked(id uint32) bool { return p.revoked[id] }

// ApproverForKey returns the approver whose keyset holds key id, or nil.
func (p *Policy) ApproverForKey(id uint32) *Approver {
	return p.keyIndex[id]
}

// defaultMaxTTL bounds an approval's window when a rule names none.
const defaultMaxTTL = 15 * time.Minute
