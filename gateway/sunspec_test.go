package gateway_test

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	mbclient "github.com/simonvetter/modbus"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/simulators"
	"github.com/gridseal/gridseal/simulators/simtest"
)

// sunspecQuorum: the inverter's power limit, named as SunSpec point
// 123.WMaxLimPct, may be set to 0..60 % with the approval of 2 of the
// operators; its registers may be read back.
const sunspecQuorum = `devices:
  - name: inverter-1
    upstream: %s
    units: [1]
    rules:
      - {name: telemetry, allow: read, table: holding-registers, addresses: 40000-50299}
      - name: power-limit
        allow: write
        functions: [6]
        sunspec: {model: 123, point: WMaxLimPct}
        values: 0..60 %%
        requires: {group: operators, m: 2}
`

// approve stores a proposal of pdu for inverter-1 unit 1 by proposer under
// pol, signed by signers, and waits until store's index holds the last
// signature.
func approve(t *testing.T, store *approvals.Store, pol *policy.Policy, pdu []byte, proposer *keystest.Person, signers ...*keystest.Person) approvals.ID {
	t.Helper()
	pr, err := approvals.NewProposal(pol, "inverter-1", 1, pdu, 15*time.Minute, proposer.Name, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sig, err := proposer.Signer.Sign(approvals.ProposeInput(pr.ID()))
	if err != nil {
		t.Fatal(err)
	}
	id, err := store.Propose(t.Context(), pr, sig)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range signers {
		sig, err := p.Signer.Sign(approvals.ApproveInput(id))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := store.AddSignature(t.Context(), id, sig); err != nil {
			t.Fatal(err)
		}
	}
	waitIndexed(t, store, id, pdu)
	return id
}

// waitIndexed waits until store's index of inverter-1 unit 1's candidates
// for pdu holds approval id as it stands now: every signature added.
func waitIndexed(t *testing.T, store *approvals.Store, id approvals.ID, pdu []byte) {
	t.Helper()
	last, err := store.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the proxy's approval index to hold every signature", func() bool {
		for _, st := range store.Candidates("inverter-1", 1, pdu) {
			if st.ID == id && st.Revision >= last.Revision {
				return true
			}
		}
		return false
	})
}

// TestSunSpecQuorumRuleThroughGateway: a rule naming a SunSpec point may
// require a quorum. Through the gateway, against the simulated inverter in
// its standard layout and in one where the point has moved: a write of the
// point is denied for want of an approval once the map is read; approved by
// 2 of 3 operators it is forwarded once and its replay denied; an approved
// value outside the point's range is denied and the approval stays unused.
func TestSunSpecQuorumRuleThroughGateway(t *testing.T) {
	moved := simulators.Layout{Base: 50000, Models: []uint16{120, 121, 103, 123}}
	alice, bob, carol := keystest.NewPerson(t, "alice"), keystest.NewPerson(t, "bob"), keystest.NewPerson(t, "carol")
	var approvers strings.Builder
	approvers.WriteString("id: plant\nversion: 1\napprovers:\n")
	for _, p := range []*keystest.Person{alice, bob, carol} {
		policy.WriteKeysetEntry(&approvers, p.Name, []string{"operators"}, p.PublicJSON(t))
	}
	for _, tc := range []struct {
		name   string
		layout *simulators.Layout
		at     uint16 // where the layout puts 123.WMaxLimPct
	}{
		{"standard layout", nil, simulators.InverterLimitPct},
		{"moved layout", &moved, 50000 + 2 + 68 + 28 + 32 + 52 + 5}, // SunS, 1, 120, 121, 103, then WMaxLimPct in 123
	} {
		t.Run(tc.name, func(t *testing.T) {
			simAddr, _ := simtest.Start(t, simulators.Options{InverterLayout: tc.layout})
			cfg := site(t, simAddr)
			if err := os.WriteFile(cfg.Policy, []byte(approvers.String()+fmt.Sprintf(sunspecQuorum, simAddr)), 0o600); err != nil {
				t.Fatal(err)
			}
			gw, dataDir := startGateway(t, cfg)
			c := simtest.Client(t, gw.Addrs()[0], 1, 5*time.Second)
			limit := func() uint16 {
				t.Helper()
				v, err := c.ReadRegister(tc.at, mbclient.HOLDING_REGISTER)
				if err != nil {
					t.Fatal(err)
				}
				return v
			}

			// Until the map is read the rule is not resolved (exception 2);
			// then the write needs an approval (exception 1).
			testwait.For(t, "the gateway to resolve 123.WMaxLimPct", func() bool {
				return errors.Is(c.WriteRegister(tc.at, 30), mbclient.ErrIllegalFunction)
			})
			if v := limit(); v == 30 {
				t.Fatal("the unapproved write reached the inverter")
			}
			store := gw.Approvals()
			id := approve(t, store, gw.Policy(), modbus.AppendWriteSingleRegister(nil, tc.at, 30), bob, alice, carol)
			if err := c.WriteRegister(tc.at, 30); err != nil {
				t.Fatalf("the approved write: %v", err)
			}
			if v := limit(); v != 30 {
				t.Fatalf("limit %d after the approved write, want 30", v)
			}
			if err := c.WriteRegister(tc.at, 30); !errors.Is(err, mbclient.ErrIllegalFunction) {
				t.Fatalf("the approved write again: %v, want a refusal (exception 1)", err)
			}
			over := approve(t, store, gw.Policy(), modbus.AppendWriteSingleRegister(nil, tc.at, 61), alice, bob, carol)
			if err := c.WriteRegister(tc.at, 61); !errors.Is(err, mbclient.ErrIllegalDataValue) {
				t.Fatalf("an approved 61 %%: %v, want exception 3", err)
			}
			if st, err := store.Get(t.Context(), over); err != nil || st.Entry.Consumed != nil {
				t.Fatalf("the approval of 61 %% after its write was denied: %+v %v; want it unused", st, err)
			}
			if v := limit(); v != 30 {
				t.Fatalf("limit %d, want 30", v)
			}
			gw.Close()

			var writes []string
			for _, ev := range chainEvents(t, dataDir) {
				if ev.Phase == audit.PhaseComplete && ev.Function == byte(modbus.WriteSingleRegister) && !strings.Contains(ev.Reason, "not resolved") {
					writes = append(writes, ev.Verdict.String()+" "+ev.Reason)
				}
			}
			want := []string{
				"deny rule power-limit: needs an approval by 2 of operators for exactly this command (gridseal propose); 123.WMaxLimPct = 30 % WMax",
				"allow power-limit: approval " + id.String()[:12] + "… by alice, carol; 123.WMaxLimPct = 30 % WMax",
				"deny rule power-limit: approval " + id.String()[:12] + "…: 2 of 2 operators signed (alice, carol); already used by gw-1",
				"deny rule power-limit: 123.WMaxLimPct = 61 % WMax: register " + fmt.Sprint(tc.at) + " value 61 outside 0..60",
			}
			if len(writes) != len(want) {
				t.Fatalf("writes recorded:\n%s", strings.Join(writes, "\n"))
			}
			for i := range want {
				if !strings.HasPrefix(writes[i], want[i]) {
					t.Errorf("write %d recorded as\n  %s\nwant\n  %s…", i+1, writes[i], want[i])
				}
			}
		})
	}
}
