package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// TestMirrorCommand: "gridseal mirror" run as a user would — a witness key
// from "keys witness", the operator's NATS as --source — cosigns the
// checkpoints of an operator's checkpointer that lists it as a witness;
// "mirror check" passes, "mirror compare" confirms the cosigned checkpoint
// against the mirror's copy and calls a second checkpoint of the same size
// with another root a split view; a block the writer re-signs at a height
// the mirror verified makes "mirror check" fail, naming it.
func TestMirrorCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c := recordChain(t, 2, 3)
	dir := filepath.Dir(c.trust)
	code, out, stderr := runCLI(t, ctx, "keys", "witness", "mirror.test/m1", "--dir", dir)
	if code != 0 || !strings.Contains(out, "+") {
		t.Fatalf("keys witness: exit %d\n%s%s", code, out, stderr)
	}
	vkey := strings.TrimSpace(out[strings.LastIndex(out, "\n  ")+3:])
	wv, err := chain.NewCosignatureVerifier(vkey)
	if err != nil {
		t.Fatalf("keys witness printed %q: %v", vkey, err)
	}
	if code, _, _ := runCLI(t, ctx, "keys", "witness", "mirror.test/m1", "--dir", dir); code != 1 {
		t.Fatalf("a second witness key of the same name: exit %d, want 1", code)
	}
	cpVKey, err := chain.NewCheckpointKey(dir, "cp")
	if err != nil {
		t.Fatal(err)
	}
	if err := chain.WriteTrust(c.trust, "gw-1", filepath.Join(dir, "gw-1.public.json"), cpVKey); err != nil {
		t.Fatal(err)
	}
	skey, _ := chain.CosignerKeyPaths(dir, "mirror.test/m1")
	if code, _, stderr := runCLI(t, ctx, "mirror", "--key", skey, "--trust", c.trust); code != 2 || !strings.Contains(stderr, "--source") {
		t.Fatalf("mirror without --source: exit %d, %s", code, stderr)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	mdata := t.TempDir()
	mctx, stop := context.WithCancel(ctx)
	exited := make(chan string, 1)
	go func() {
		code, out, stderr := runCLI(t, mctx, "mirror", "--source", c.srv.URL(), "--key", skey, "--trust", c.trust,
			"--listen", addr, "--data-dir", mdata, "--log-format", "json")
		if code != 0 {
			out = fmt.Sprintf("exit %d\n%s%s", code, out, stderr)
		} else {
			out = ""
		}
		exited <- out
	}()

	js, err := jetstream.New(natstest.Connect(t, c.srv.URL()))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := chain.LoadCheckpointSigner(filepath.Join(dir, "cp.checkpoint.key"))
	if err != nil {
		t.Fatal(err)
	}
	trust, err := chain.LoadTrust(c.trust, "")
	if err != nil {
		t.Fatal(err)
	}
	cpr := &chain.Checkpointer{Signer: signer, Every: 50 * time.Millisecond, Log: zap.NewNop(), WitnessQuorum: 1,
		Witnesses: []chain.Witness{{URL: "http://" + addr, Verifier: wv}}, WitnessTimeout: 3 * time.Second}
	cctx, cstop := context.WithCancel(ctx)
	cdone := make(chan struct{})
	go func() { defer close(cdone); _ = cpr.Run(cctx, js) }()
	defer func() { cstop(); <-cdone }()
	var cp *chain.Checkpoint
	testwait.For(t, "a checkpoint cosigned by the mirror", func() bool {
		c.record(t, true)
		cp, _ = chain.LatestCheckpoint(ctx, js, trust.Checkpointers)
		if cp == nil {
			return false
		}
		cs, _ := chain.Cosignatures(cp.Note, []*chain.CosignatureVerifier{wv})
		return len(cs) == 1
	})

	if code, out, stderr := runCLI(t, ctx, "mirror", "check", "--data-dir", mdata); code != 0 || !strings.Contains(out, "no alarms") {
		t.Fatalf("mirror check of a sound mirror: exit %d\n%s%s", code, out, stderr)
	}
	good := filepath.Join(dir, "a.note")
	if err := os.WriteFile(good, cp.Note, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = runCLI(t, ctx, "mirror", "compare", good, "--trust", c.trust, "--stream", "--data-dir", mdata)
	if code != 0 || !strings.Contains(out, "1 of 1 checkpoints have the root of the tree") {
		t.Fatalf("mirror compare of the cosigned checkpoint with the mirror's copy: exit %d\n%s%s", code, out, stderr)
	}
	other, err := chain.SignCheckpoint(cp.Size, chain.Hash{0xee}, signer)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "b.note")
	if err := os.WriteFile(bad, other.Note, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runCLI(t, ctx, "mirror", "compare", good, bad, "--trust", c.trust)
	if code != 1 || !strings.Contains(out, "SPLIT VIEW "+good+" and "+bad) {
		t.Fatalf("mirror compare of two roots at one size: exit %d\n%s", code, out)
	}

	// The writer re-signs another block 1 (its key is the writer's).
	var prev chain.Hash
	err = chain.Scan(ctx, js, 1, false, func(m *chain.Msg) error {
		if b, err := chain.ParseBlock(m.Data); err == nil && b.Height == 0 {
			prev = b.Hash
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ws, err := keys.LoadSigner(filepath.Join(dir, "gw-1.private.json"))
	if err != nil {
		t.Fatal(err)
	}
	pdu := modbus.AppendWriteSingleRegister(nil, 40127, 9999)
	forged := chain.AppendEvent(nil, &audit.Event{Time: time.Now(), Op: 9999, Phase: audit.PhaseComplete,
		Client: netip.MustParseAddrPort("127.0.0.1:50200"), Listener: "127.0.0.1:5020", Device: "inverter-1",
		Unit: 1, Function: 6, Class: "write", Address: 40127, Quantity: 1, PDU: pdu, Response: pdu,
		Verdict: audit.Allow, Rule: "setpoint", Reason: "setpoint"})
	msg, hash, err := chain.EncodeBlock("gw-1", ws, 1, prev, time.Now(), [][]byte{forged})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: chain.Subject("gw-1"), Data: msg}, jetstream.WithMsgID(hash.String())); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "mirror check to fail on the re-signed block", func() bool {
		code, out, _ := runCLI(t, ctx, "mirror", "check", "--data-dir", mdata)
		return code == 1 && strings.Contains(out, "ALARM") && strings.Contains(out, "block 1): fork")
	})
	stop()
	if msg := <-exited; msg != "" {
		t.Fatalf("gridseal mirror: %s", msg)
	}
}
