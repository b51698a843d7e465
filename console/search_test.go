package console_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/console"
	"github.com/gridseal/gridseal/eve"
	"github.com/gridseal/gridseal/eve/evetest"
	"github.com/gridseal/gridseal/internal/chaintest"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// history is what a plant's chain might hold over 100 minutes: 1500
// operations on three devices, from four clients, some denied, some
// allowed writes under an approval (each recorded twice, request and
// completion, with one op), with times that go back up to 20 s now and
// then, as writers' clocks and late completions make them.
type history struct {
	base   time.Time
	events []audit.Event // as recorded, in stream order
}

const historyOps = 1500

// approvalID is the approval id of operation i, as the approvals package
// writes one: 64 hex digits.
func approvalID(i int) string { return fmt.Sprintf("%x", sha256.Sum256(fmt.Append(nil, i))) }

func recordHistory(t *testing.T, r *rig) *history {
	t.Helper()
	h := &history{base: time.Now().Add(-3 * time.Hour).Truncate(time.Minute)}
	rng := rand.New(rand.NewPCG(14, 5))
	devices := []string{"inverter-1", "battery-1", "breaker-1"}
	for i := range historyOps {
		at := h.base.Add(time.Duration(i)*4*time.Second + time.Duration(rng.IntN(41)-20)*time.Second)
		ev := audit.Event{Time: at, Op: uint64(i + 1), Phase: audit.PhaseComplete,
			Client: netip.MustParseAddrPort(fmt.Sprintf("10.0.0.%d:%d", 1+i%4, 50000+i%7)), Listener: "127.0.0.1:502",
			Device: devices[i%3], Unit: 1, Function: 3, Class: "read", Address: uint16(40000 + i%50), Quantity: 2,
			Verdict: audit.Allow, Rule: "reads", Reason: "rule reads allows it"}
		ev.PDU = modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, ev.Address, ev.Quantity)
		ev.Response = []byte{3, 4, 0, 1, 0, 2}
		switch {
		case i%10 == 3: // a denied write
			ev.Function, ev.Class, ev.Quantity, ev.Verdict = 6, "write", 1, audit.Deny
			ev.PDU, ev.Response, ev.Exception = modbus.AppendWriteSingleRegister(nil, ev.Address, 99), nil, 1
			ev.Rule, ev.Reason = "", "no rule allows function 6"
		case i%25 == 7: // an approved write: its request before forwarding, then its completion
			ev.Function, ev.Class, ev.Quantity = 6, "write", 1
			ev.PDU = modbus.AppendWriteSingleRegister(nil, ev.Address, 42)
			ev.Response = ev.PDU
			ev.Approval = approvalID(i)
			ev.Rule, ev.Reason = "setpoint", "approved"
			req := ev
			req.Phase, req.Response = audit.PhaseRequest, nil
			h.events = append(h.events, req)
		}
		h.events = append(h.events, ev)
	}
	for i := range h.events {
		if err := r.rec.Record(t.Context(), &h.events[i], i == len(h.events)-1); err != nil {
			t.Fatal(err)
		}
	}
	testwait.For(t, "the console to tile every event", func() bool {
		var res console.SearchResult
		return getJSON(t, r, "/api/search?limit=1", &res) == 200 && res.Size == int64(len(h.events))
	})
	return h
}

// edge is the time of the first event of an entry bundle that events
// after it in the stream precede: a range that ends there ends inside the
// bundle.
func (h *history) edge(t *testing.T) time.Time {
	for k := 1; (k+1)*256 < len(h.events); k++ {
		first := h.events[k*256].Time
		for _, ev := range h.events[k*256+1 : k*256+20] {
			if ev.Time.Before(first) {
				return first
			}
		}
	}
	t.Fatal("no bundle starts with an event later than those after it")
	return time.Time{}
}

func getJSON(t *testing.T, r *rig, path string, into any) int {
	t.Helper()
	resp, err := http.Get(r.web.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == 200 && into != nil {
		if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	return resp.StatusCode
}

// searchAll pages through a search (before=) and returns every row.
func searchAll(t *testing.T, r *rig, q url.Values, limit int) (rows []console.EventRow, pages int) {
	t.Helper()
	q.Set("limit", strconv.Itoa(limit))
	for pages = 1; pages < 10_000; pages++ {
		var res console.SearchResult
		if code := getJSON(t, r, "/api/search?"+q.Encode(), &res); code != 200 {
			t.Fatalf("search %s: status %d", q.Encode(), code)
		}
		if len(res.Rows) > limit {
			t.Fatalf("search %s: %d rows over the limit %d", q.Encode(), len(res.Rows), limit)
		}
		rows = append(rows, res.Rows...)
		if res.Next < 0 {
			return rows, pages
		}
		q.Set("before", strconv.FormatInt(res.Next, 10))
	}
	t.Fatal("search never ended")
	return nil, 0
}

func TestSearchFiltersAndTimeRange(t *testing.T) {
	r := start(t)
	h := recordHistory(t, r)
	at := func(d time.Duration) time.Time { return h.base.Add(d) }
	for _, tc := range []struct {
		name  string
		q     url.Values
		match func(ev *audit.Event) bool
	}{
		{"everything", url.Values{}, func(*audit.Event) bool { return true }},
		{"device", url.Values{"device": {"battery-1"}}, func(ev *audit.Event) bool { return ev.Device == "battery-1" }},
		{"verdict", url.Values{"verdict": {"deny"}}, func(ev *audit.Event) bool { return ev.Verdict == audit.Deny }},
		{"function", url.Values{"function": {"6"}}, func(ev *audit.Event) bool { return ev.Function == 6 }},
		{"address inside a read's range", url.Values{"address": {"40011"}}, func(ev *audit.Event) bool {
			return 40011 >= int(ev.Address) && 40011 < int(ev.Address)+int(ev.Quantity)
		}},
		{"client", url.Values{"client": {"10.0.0.3:"}}, func(ev *audit.Event) bool { return strings.HasPrefix(ev.Client.String(), "10.0.0.3:") }},
		{"approval id prefix", url.Values{"approval": {approvalID(32)[:40]}}, func(ev *audit.Event) bool {
			return ev.Approval == approvalID(32)
		}},
		{"time range across bundles", url.Values{"since": {at(17 * time.Minute).Format(time.RFC3339)}, "until": {at(71 * time.Minute).Format(time.RFC3339)}},
			func(ev *audit.Event) bool {
				return !ev.Time.Before(at(17*time.Minute)) && ev.Time.Before(at(71*time.Minute))
			}},
		{"since alone", url.Values{"since": {at(95 * time.Minute).Format(time.RFC3339Nano)}}, func(ev *audit.Event) bool { return !ev.Time.Before(at(95 * time.Minute)) }},
		{"until alone", url.Values{"until": {at(3 * time.Minute).Format(time.RFC3339Nano)}}, func(ev *audit.Event) bool { return ev.Time.Before(at(3 * time.Minute)) }},
		{"device, verdict and time", url.Values{"device": {"inverter-1"}, "verdict": {"deny"}, "since": {at(40 * time.Minute).Format(time.RFC3339)}, "until": {at(50 * time.Minute).Format(time.RFC3339)}},
			func(ev *audit.Event) bool {
				return ev.Device == "inverter-1" && ev.Verdict == audit.Deny && !ev.Time.Before(at(40*time.Minute)) && ev.Time.Before(at(50*time.Minute))
			}},
		// Ranges that end at a bundle's first event: the ones after it
		// stamped earlier are in the range too.
		{"until a bundle's first event", url.Values{"until": {h.edge(t).Format(time.RFC3339Nano)}},
			func(ev *audit.Event) bool { return ev.Time.Before(h.edge(t)) }},
		{"since a bundle's first event", url.Values{"since": {h.edge(t).Format(time.RFC3339Nano)}},
			func(ev *audit.Event) bool { return !ev.Time.Before(h.edge(t)) }},
		{"nothing", url.Values{"device": {"no-such"}}, func(*audit.Event) bool { return false }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want []int64 // leaves, newest first
			for i := len(h.events) - 1; i >= 0; i-- {
				if tc.match(&h.events[i]) {
					want = append(want, int64(i))
				}
			}
			rows, _ := searchAll(t, r, tc.q, searchMaxLimit)
			var got []int64
			for _, row := range rows {
				got = append(got, row.Leaf)
				ev := &h.events[row.Leaf]
				if !row.Time.Equal(ev.Time) || row.Op != ev.Op || row.Device != ev.Device || row.Writer != "gw-1" || row.Block == "" || row.Seq == 0 {
					t.Fatalf("row of leaf %d: %+v, recorded %+v", row.Leaf, row.Record, ev)
				}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("%d rows, want %d\ngot  %v\nwant %v", len(got), len(want), head(got), head(want))
			}
		})
	}
	t.Run("pages of a limit add up to the whole", func(t *testing.T) {
		whole, _ := searchAll(t, r, url.Values{"verdict": {"deny"}}, searchMaxLimit)
		paged, pages := searchAll(t, r, url.Values{"verdict": {"deny"}}, 7)
		if len(whole) != historyOps/10 || pages < len(whole)/7 || !slices.EqualFunc(whole, paged, func(a, b console.EventRow) bool { return a.Leaf == b.Leaf }) {
			t.Fatalf("%d rows in %d pages of 7, %d in one", len(paged), pages, len(whole))
		}
		var res console.SearchResult
		getJSON(t, r, "/api/search?verdict=deny", &res)
		if len(res.Rows) != 100 || res.Next < 0 {
			t.Fatalf("default limit: %d rows, next %d; want 100 and more to come", len(res.Rows), res.Next)
		}
	})
	t.Run("bad queries", func(t *testing.T) {
		for _, q := range []string{"verdict=maybe", "function=256", "function=x", "address=70000", "since=yesterday",
			"limit=0", "limit=1001", "before=-1", "since=2025-06-01T10:00:00Z&until=2025-06-01T09:00:00Z"} {
			if code := getJSON(t, r, "/api/search?"+q, nil); code != http.StatusBadRequest {
				t.Errorf("search?%s: status %d, want 400", q, code)
			}
		}
	})
}

const searchMaxLimit = 1000

func head(xs []int64) []int64 { return xs[:min(len(xs), 12)] }

// TestEventPermalink: an event by its leaf is the row the search shows,
// with its operation's phases; its leaf is the tree's (the inclusion
// proof names the same leaf); /e/LEAF leads to the page that shows it.
func TestEventPermalink(t *testing.T) {
	cp := keystest.NewCheckpointer(t, "checkpointer-test")
	r := startWith(t, &cp)
	h := recordHistory(t, r)
	var res console.SearchResult
	getJSON(t, r, "/api/search?approval="+approvalID(57)+"&limit=5", &res)
	if len(res.Rows) != 2 || res.Rows[0].Phase != "complete" || res.Rows[1].Phase != "request" {
		t.Fatalf("the approved write's two records: %+v", res.Rows)
	}
	row := res.Rows[0]
	var ev console.EventView
	if code := getJSON(t, r, fmt.Sprintf("/api/event/%d", row.Leaf), &ev); code != 200 {
		t.Fatalf("event: status %d", code)
	}
	if ev.Leaf != row.Leaf || ev.Seq != row.Seq || ev.Index != row.Index || ev.Block != row.Block || ev.Op != h.events[row.Leaf].Op {
		t.Fatalf("event %+v, searched %+v", ev.EventRow, row)
	}
	if len(ev.Phases) != 2 || ev.Phases[0].Leaf != res.Rows[1].Leaf || ev.Phases[1].Leaf != row.Leaf {
		t.Fatalf("phases of the operation: %+v", ev.Phases)
	}
	var p console.ProofView
	testwait.For(t, "the event's proof", func() bool {
		p = console.ProofView{}
		getJSON(t, r, fmt.Sprintf("/api/proof?seq=%d&index=%d", ev.Seq, ev.Index), &p)
		return p.Status == "proved"
	})
	if p.Leaf != ev.Leaf || p.LeafHash != ev.LeafHash {
		t.Fatalf("proof of leaf %d (%s), event leaf %d (%s)", p.Leaf, p.LeafHash, ev.Leaf, ev.LeafHash)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(fmt.Sprintf("%s/e/%d", r.web.URL, ev.Leaf))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != fmt.Sprintf("../?event=%d", ev.Leaf) {
		t.Fatalf("permalink: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	for path, want := range map[string]int{"/api/event/x": 400, "/api/event/-1": 400, fmt.Sprintf("/api/event/%d", len(h.events)): 404, "/e/x": 404} {
		if code := getJSON(t, r, path, nil); code != want {
			t.Errorf("%s: status %d, want %d", path, code, want)
		}
	}
}

func download(t *testing.T, r *rig, q string) (body []byte, resp *http.Response) {
	t.Helper()
	resp, err := http.Get(r.web.URL + "/api/export?" + q)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if body, err = io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	return body, resp
}

// TestExportMatchesChainExport: the console's download of a filter holds
// what `gridseal chain export` reads from the stream for it — the same
// records, JSON lines or EVE lines that validate against Suricata's
// schema — and from= goes on where a download stopped.
func TestExportMatchesChainExport(t *testing.T) {
	r := start(t)
	h := recordHistory(t, r)
	since, until := h.base.Add(20*time.Minute), h.base.Add(80*time.Minute)
	f := &chain.Filter{Device: "breaker-1", Since: since, Until: until}
	var want []chain.Record
	var wantEVE bytes.Buffer
	enc := json.NewEncoder(&wantEVE)
	m := &eve.Mapper{Devices: map[string]string{}}
	err := chain.ScanRecords(t.Context(), r.js, 1, false, f, func(rec *chain.Record, ev *audit.Event) error {
		want = append(want, *rec)
		for _, e := range m.For(rec, ev) {
			if err := enc.Encode(e); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || len(want) < 100 {
		t.Fatalf("chain export: %d records, %v", len(want), err)
	}
	q := url.Values{"device": {"breaker-1"}, "since": {since.Format(time.RFC3339)}, "until": {until.Format(time.RFC3339)}}
	t.Run("jsonl", func(t *testing.T) {
		body, resp := download(t, r, q.Encode()+"&format=jsonl")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Disposition") != `attachment; filename="gridseal-events.jsonl"` {
			t.Fatalf("status %d, disposition %q", resp.StatusCode, resp.Header.Get("Content-Disposition"))
		}
		var got []chain.Record
		sc := bufio.NewScanner(bytes.NewReader(body))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var rec chain.Record
			if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
				t.Fatal(err)
			}
			got = append(got, rec)
		}
		if len(got) != len(want) {
			t.Fatalf("%d records, chain export has %d", len(got), len(want))
		}
		for i := range got {
			a, _ := json.Marshal(got[i])
			b, _ := json.Marshal(want[i])
			if !bytes.Equal(a, b) {
				t.Fatalf("record %d:\n%s\nchain export:\n%s", i, a, b)
			}
		}
		if resp.Trailer.Get("Gridseal-Events") != strconv.Itoa(len(want)) || resp.Trailer.Get("Gridseal-Next") != "" {
			t.Fatalf("trailer %v", resp.Trailer)
		}
	})
	t.Run("eve", func(t *testing.T) {
		body, resp := download(t, r, q.Encode()+"&format=eve")
		if resp.StatusCode != 200 || !strings.HasSuffix(resp.Header.Get("Content-Disposition"), `filename="gridseal-eve.json"`) {
			t.Fatalf("status %d, disposition %q", resp.StatusCode, resp.Header.Get("Content-Disposition"))
		}
		if n := evetest.Check(t, body); n < len(want) {
			t.Fatalf("%d EVE lines for %d events", n, len(want))
		}
		// The policy in force names plc only: breaker-1's dest is the listener, as in chain export.
		if !bytes.Equal(body, wantEVE.Bytes()) {
			t.Fatalf("EVE differs from chain export's:\n%.600s\nchain export:\n%.600s", body, wantEVE.Bytes())
		}
		if !bytes.Contains(body, []byte(`"event_type":"alert"`)) {
			t.Fatal("no alert for the denied writes")
		}
	})
	t.Run("from goes on", func(t *testing.T) {
		// The 11th matching event's leaf: from there, the rest.
		rows, _ := searchAll(t, r, q, searchMaxLimit)
		slices.Reverse(rows)
		body, _ := download(t, r, q.Encode()+"&from="+strconv.FormatInt(rows[10].Leaf, 10))
		if n := bytes.Count(body, []byte("\n")); n != len(want)-10 {
			t.Fatalf("from the 11th: %d lines, want %d", n, len(want)-10)
		}
	})
	t.Run("bad format", func(t *testing.T) {
		if _, resp := download(t, r, "format=csv"); resp.StatusCode != 400 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
}

// TestChartCountsWhatWasSent: per device and step, the chart counts the
// operations and denies recorded then (a write's request and completion
// count once).
func TestChartCountsWhatWasSent(t *testing.T) {
	r := start(t)
	h := recordHistory(t, r)
	since, until, step := h.base.Add(10*time.Minute), h.base.Add(70*time.Minute), 5*time.Minute
	var c console.ChartView
	if code := getJSON(t, r, "/api/chart?"+url.Values{"since": {since.Format(time.RFC3339)}, "until": {until.Format(time.RFC3339)}, "step": {"5m"}}.Encode(), &c); code != 200 {
		t.Fatalf("chart: status %d", code)
	}
	if c.Buckets != 12 || c.StepS != 300 || c.Partial != "" {
		t.Fatalf("chart: %d buckets of %vs, partial %q", c.Buckets, c.StepS, c.Partial)
	}
	want := map[string]*console.DeviceChart{}
	for i := range h.events {
		ev := &h.events[i]
		if ev.Phase != audit.PhaseComplete || ev.Time.Before(since) || !ev.Time.Before(until) {
			continue
		}
		d := want[ev.Device]
		if d == nil {
			d = &console.DeviceChart{Requests: make([]int, 12), Denies: make([]int, 12)}
			want[ev.Device] = d
		}
		k := int(ev.Time.Sub(since) / step)
		d.Requests[k]++
		d.Total++
		if ev.Verdict != audit.Allow {
			d.Denies[k]++
			d.Denied++
		}
	}
	if len(c.Devices) != 3 {
		t.Fatalf("devices %v", c.Devices)
	}
	for name, w := range want {
		g := c.Devices[name]
		if g == nil || !slices.Equal(g.Requests, w.Requests) || !slices.Equal(g.Denies, w.Denies) || g.Total != w.Total || g.Denied != w.Denied || w.Denied == 0 {
			t.Fatalf("%s: %+v, want %+v", name, g, w)
		}
	}
	var d console.ChartView
	getJSON(t, r, "/api/chart?device=battery-1&verdict=deny&"+url.Values{"since": {since.Format(time.RFC3339)}, "until": {until.Format(time.RFC3339)}}.Encode(), &d)
	if len(d.Devices) != 1 || d.Devices["battery-1"].Total != want["battery-1"].Denied || d.StepS != 60 {
		t.Fatalf("filtered chart, default step: %+v", d)
	}
	for _, q := range []string{"step=10ms", "step=1s&since=1h", "since=1h&until=2h"} {
		if code := getJSON(t, r, "/api/chart?"+q, nil); code != 400 {
			t.Errorf("chart?%s: status %d, want 400", q, code)
		}
	}
}

// TestSearchesOpenNoConsumers: many viewers searching, exporting and
// charting at once leave the stream with the consumers it had — the
// console's live view, its verifier and its tiler — and each gets its
// answer or a clear "busy".
func TestSearchesOpenNoConsumers(t *testing.T) {
	r := start(t)
	recordHistory(t, r)
	consumers := func() int { return chaintest.StreamInfo(t, r.js, chain.StreamName).State.Consumers }
	before := consumers()
	if before != 3 {
		t.Fatalf("%d consumers before any search; want 3 (the live view, the verifier and the tiler)", before)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for i := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := []string{"/api/search?verdict=deny&limit=1000", "/api/export?format=eve", "/api/chart?since=4h", "/api/event/5"}[i%4]
			resp, err := http.Get(r.web.URL + path)
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			mu.Lock()
			codes[resp.StatusCode]++
			mu.Unlock()
			if n := consumers(); n != before {
				t.Errorf("%d consumers while viewers search", n)
			}
		}()
	}
	wg.Wait()
	if codes[200] == 0 || codes[200]+codes[503] != 24 {
		t.Fatalf("status codes %v: want 200s, and 503 (busy) for the rest", codes)
	}
}
