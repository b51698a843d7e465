package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/gridseal/gridseal/internal/demo"
	"github.com/gridseal/gridseal/internal/testtool"
	"github.com/gridseal/gridseal/simulators"
)

// TestConsoleInHeadlessChromium opens the SOC console of a running demo in
// a real headless Chromium (Debian's chromium, which `make test` installs)
// and checks what an analyst sees: an allowed write is one row with both
// its phases, times carry dates, a denied write appears within 2 s with its
// reason and its pending proof turns into the proof by itself, the verdict
// filter hides allowed rows, a proposal shows in the pending-approvals
// panel, and at 800 px wide nothing overflows. Screenshots go to
// $GRIDSEAL_ARTIFACTS (or the test's temporary directory).
func TestConsoleInHeadlessChromium(t *testing.T) {
	data := t.TempDir()
	listen, web := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	go func() {
		code, _, _ := runCLI(t, ctx, "demo", "--tour=false", "--listen", listen, "--sim-listen", "127.0.0.1:0",
			"--data-dir", data, "--log-format", "json", "--http", web, "--checkpoint-every", "2s")
		done <- code
	}()
	defer func() {
		cancel()
		<-done
	}()
	waitListening(t, "the console", web)

	p := headless(t, ctx, 1600, 1000, 90*time.Second)
	bctx, run, poll := p.ctx, p.run, p.poll
	run("open the console", chromedp.Navigate("http://"+web+"/"), chromedp.WaitVisible("#stream"))
	poll("the chain badge", `document.querySelector('#chain-badge').textContent.includes('verified')`, 10*time.Second)

	c := modbusClient(t, listen, simulators.UnitInverter)
	if _, err := c.ReadRegister(simulators.InverterPower, 0 /* holding */); err != nil {
		t.Fatal(err)
	}
	poll("the inverter up in the devices panel", `[...document.querySelectorAll('#devices tbody tr')].some(r => r.cells[0].textContent === 'inverter-1' && r.cells[1].textContent === 'up')`, 5*time.Second)
	// An allowed write is recorded twice, before it is forwarded and with
	// the device's answer: the stream shows the operation once, with both
	// phases, and its time with the date.
	if err := c.WriteRegister(simulators.InverterLimitPct, 60); err != nil {
		t.Fatal(err)
	}
	poll("the allowed write as one row with both phases", `(() => {
		const rs = [...document.querySelectorAll('#stream tbody tr')].filter(r => r.textContent.includes('40127+1'));
		return rs.length === 1 && rs[0].dataset.verdict === 'allow' && rs[0].querySelector('.phases')?.textContent === 'request → complete'; })()`, 5*time.Second)
	poll("dates in the time column", `[...document.querySelectorAll('#stream tbody tr')].every(r => /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}$/.test(r.cells[0].textContent))`, time.Second)

	// A denied write appears within 2 s. Clicked while no signed checkpoint
	// covers it yet, its proof says so, then turns into the proof once one
	// does, without another click. (The checkpointer signs every 2 s: a
	// checkpoint that lands between the event and the click spoils the
	// attempt, so another write tries again.)
	pendingSeen := false
	for attempt := 1; attempt <= 3 && !pendingSeen; attempt++ {
		start := time.Now()
		if err := c.WriteRegister(simulators.InverterConn, 0); err == nil {
			t.Fatal("disconnect was forwarded")
		}
		poll("the denied write in the stream", fmt.Sprintf(`(() => {
			const rs = [...document.querySelectorAll('#stream tbody tr')].filter(r => r.dataset.verdict === 'deny' && r.textContent.includes('40126+1') && r.textContent.includes('outside 40127'));
			if (rs.length < %d) return false;
			rs[0].click();
			return true; })()`, attempt), 2*time.Second)
		t.Logf("denied write visible after %v", time.Since(start).Round(time.Millisecond))
		state, err := chromedp.Run(bctx, chromedp.Poll[string](`(() => {
			const p = document.querySelector('#proof').textContent;
			return p.startsWith('proved') ? 'proved' : p.startsWith('not yet') ? 'pending' : ''; })()`, chromedp.WithPollingTimeout(5*time.Second)))
		if err != nil {
			t.Fatalf("the denied write's proof: %v", err)
		}
		pendingSeen = state == "pending"
	}
	if !pendingSeen {
		t.Fatal("every attempt found the denied write already in a checkpoint: cannot see a pending proof refresh")
	}
	poll("the pending proof, proved without a click", `document.querySelector('#proof').textContent.startsWith('proved')`, 10*time.Second)
	proof, err := chromedp.Run(bctx, chromedp.Text("#proof"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(proof, "signed by "+demo.Checkpointer) || !strings.Contains(proof, "gridseal/chain/GRIDSEAL_CHAIN") {
		t.Fatalf("proof panel: %q", proof)
	}
	poll("the signed checkpoint in the chain panel", `document.querySelector('#chain').textContent.includes('by `+demo.Checkpointer+`')`, 10*time.Second) // status reads checkpoints at most every 5 s
	saveShot(t, bctx, "console-proof.png")
	run("close the event", chromedp.Click("#close-detail"))

	run("filter on deny", chromedp.Evaluate[chromedp.Void](`(() => { const s = document.querySelector('#f-verdict'); s.value = 'deny'; s.dispatchEvent(new Event('change')); })()`))
	poll("only denied rows, each once", `(() => { const rows = [...document.querySelectorAll('#stream tbody tr')];
		const shown = parseInt(document.querySelector('#count').textContent);
		return rows.length > 0 && rows.every(r => r.dataset.verdict === 'deny') && rows.length === shown; })()`, 2*time.Second)
	time.Sleep(500 * time.Millisecond) // past the filter's reconnect: the backlog must not be added twice
	poll("still each denied row once", `(() => { const rows = [...document.querySelectorAll('#stream tbody tr')];
		return rows.length === parseInt(document.querySelector('#count').textContent); })()`, 2*time.Second)

	code, out, stderr := runCLI(t, ctx, "propose", "--data-dir", data, "--device", "inverter-1", "--unit", "1",
		"--write-register", "40127=25", "--key", filepath.Join(data, "keys", "alice.private.json"))
	if code != 0 {
		t.Fatalf("propose: %s %s", out, stderr)
	}
	poll("the proposal in the pending-approvals panel",
		`document.querySelector('#approvals tbody').textContent.includes('40127 = 25')`, 5*time.Second)

	poll("dates in the approvals and chain panels", `(() => { const d = /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}$/;
		return [...document.querySelectorAll('#approvals tbody tr')].every(r => d.test(r.cells[3].textContent)) &&
			[...document.querySelectorAll('#chain dt')].some(dt => dt.textContent === 'last block' && d.test(dt.nextElementSibling.textContent)); })()`, 5*time.Second)
	saveShot(t, bctx, "console.png")

	// At 800 px wide nothing overflows: not the page, not a panel.
	run("an 800 px window", chromedp.EmulateViewport(800, 1000))
	overflow := `[document.documentElement, ...document.querySelectorAll('.panel, header, #filters')]
		.filter(e => e.scrollWidth > Math.min(e.clientWidth, 800)).map(e => (e.id || e.className || e.tagName) + ' ' + e.scrollWidth + '>' + e.clientWidth).join(', ')`
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](overflow+` === ''`, chromedp.WithPollingTimeout(2*time.Second))); err != nil {
		what, _ := chromedp.Run(bctx, chromedp.Evaluate[string](overflow))
		t.Fatalf("at 800 px wide, wider than the window or their box: %s", what)
	}
	saveShot(t, bctx, "console-800.png")

	// Investigation: the whole chain searched from the tiles, its chart,
	// a permanent link that opens the same event in a new page load, and
	// the filter's export.
	run("a wide window again", chromedp.EmulateViewport(1600, 1000))
	run("open the investigation view", chromedp.Click("#v-investigate"), chromedp.WaitVisible("#results"))
	for i := range 12 { // a few more operations to chart, two of them denied
		if i%6 == 5 {
			_ = c.WriteRegister(simulators.InverterConn, 0)
		} else if _, err := c.ReadRegister(simulators.InverterPower, 0); err != nil {
			t.Fatal(err)
		}
	}
	run("the last two minutes", chromedp.Evaluate[chromedp.Void](`(() => {
		const d = new Date(Date.now() - 120000);
		document.querySelector('#s-since').value = new Date(d - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
		document.querySelector('#s-go').click(); })()`))
	poll("every device's operations charted, the bars adding up", `(() => {
		const gs = [...document.querySelectorAll('#chart-svg g.device')];
		const inv = gs.find(g => g.dataset.device === 'inverter-1');
		const ok = inv && +inv.dataset.total >= 15 && +inv.dataset.denied >= 3 && gs.every(g =>
			[...g.querySelectorAll('.bar')].reduce((n, b) => n + +b.dataset.requests, 0) === +g.dataset.total &&
			[...g.querySelectorAll('.bar')].reduce((n, b) => n + +b.dataset.denies, 0) === +g.dataset.denied);
		if (!ok && Date.now() - (window.searched || 0) > 1000) { window.searched = Date.now(); document.querySelector('#s-go').click(); } // the tiles lag the chain by up to 200 ms
		return ok; })()`, 5*time.Second)
	saveShotOf(t, bctx, "#investigate", "console-chart.png")
	run("search the denied writes to the inverter", chromedp.Evaluate[chromedp.Void](`(() => {
		document.querySelector('#s-verdict').value = 'deny';
		document.querySelector('#s-device').value = 'inverter-1';
		document.querySelector('#s-go').click(); })()`))
	poll("only the denied writes, each with its leaf, as many as the chart counts", `(() => {
		const rows = [...document.querySelectorAll('#results tbody tr')];
		const g = document.querySelector('#chart-svg g.device[data-device="inverter-1"]');
		return rows.length > 0 && rows.every(r => r.dataset.verdict === 'deny' && r.textContent.includes('40126+1') && r.textContent.includes('outside 40127') && r.dataset.leaf) &&
			g && +g.dataset.total === rows.length && document.querySelectorAll('#chart-svg g.device').length === 1; })()`, 5*time.Second)
	run("open the newest", chromedp.Click("#results tbody tr:first-child td:nth-child(3)"))
	poll("its detail with a permanent link", `!document.querySelector('#permalink').hidden && /\/e\/\d+$/.test(document.querySelector('#permalink-a').href) &&
		document.querySelector('#detail-list').textContent.includes('stream sequence')`, 5*time.Second)
	saveShot(t, bctx, "console-search.png")
	detail, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.querySelector('#detail-list').textContent`))
	if err != nil {
		t.Fatal(err)
	}
	link, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.querySelector('#permalink-a').href`))
	if err != nil {
		t.Fatal(err)
	}
	exported, err := chromedp.Run(bctx, chromedp.Evaluate[string](`(async () => {
		const r = await fetch(document.querySelector('#s-jsonl').href);
		const lines = (await r.text()).trim().split('\n').map(JSON.parse);
		return r.headers.get('Content-Disposition') + ' ' + lines.length + ' ' + lines.every(l => l.verdict === 'deny' && l.device === 'inverter-1'); })()`,
		chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := chromedp.Run(bctx, chromedp.Evaluate[int](`document.querySelectorAll('#results tbody tr').length`))
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf(`attachment; filename="gridseal-events.jsonl" %d true`, rows); exported != want {
		t.Fatalf("the filter's JSONL export: %q, want %q", exported, want)
	}
	run("open the permanent link in a new page load", chromedp.Navigate(link), chromedp.WaitVisible("#detail"))
	poll("the same event", `document.querySelector('#detail-list').textContent === `+strconv.Quote(detail)+` && !document.querySelector('#investigate').hidden`, 5*time.Second)
	run("close the event", chromedp.Click("#close-detail"))
	run("an 800 px window", chromedp.EmulateViewport(800, 1000))
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](overflow+` === ''`, chromedp.WithPollingTimeout(2*time.Second))); err != nil {
		what, _ := chromedp.Run(bctx, chromedp.Evaluate[string](overflow))
		t.Fatalf("investigating at 800 px wide, wider than the window or their box: %s", what)
	}
}

// page is a tab of a headless Chromium.
type page struct {
	t   *testing.T
	ctx context.Context
}

// headless starts a headless Chromium (Debian's chromium, which `make
// test` installs) below ctx, with a window of w×h px, and returns its
// page; it is stopped when the test ends, and its actions fail once
// within has passed.
func headless(t *testing.T, ctx context.Context, w, h int, within time.Duration) page {
	t.Helper()
	browser := testtool.Path(t, "chromium")
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(w, h), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true), chromedp.Flag("no-first-run", true))...)
	t.Cleanup(cancelAlloc)
	bctx, cancelB := chromedp.NewContext(alloc)
	t.Cleanup(cancelB)
	bctx, cancelT := context.WithTimeout(bctx, within)
	t.Cleanup(cancelT)
	return page{t: t, ctx: bctx}
}

// run takes steps on the page; what names them if one fails.
func (p page) run(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, steps...); err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
}

// poll waits within for the page's JavaScript expr to be true.
func (p page) poll(what, expr string, within time.Duration) {
	p.t.Helper()
	if _, err := chromedp.Run(p.ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(within))); err != nil {
		p.t.Fatalf("%s (within %v): %v", what, within, err)
	}
}

// saveShotOf is saveShot of one element of the page.
func saveShotOf(t *testing.T, bctx context.Context, sel, name string) {
	t.Helper()
	writeShot(t, bctx, chromedp.Screenshot(sel), "screenshot of "+sel, 5_000, name)
}

// saveShot writes a PNG of the page to $GRIDSEAL_ARTIFACTS (or a temporary
// directory) and checks it is not blank.
func saveShot(t *testing.T, bctx context.Context, name string) {
	t.Helper()
	writeShot(t, bctx, chromedp.FullScreenshot(100) /* 100: PNG */, "screenshot", 10_000, name)
}

// writeShot takes the screenshot take, of what, writes it as name and
// checks it is a PNG of at least least bytes.
func writeShot(t *testing.T, bctx context.Context, take chromedp.Action[[]byte], what string, least int, name string) {
	t.Helper()
	shot, err := chromedp.Run(bctx, take)
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("GRIDSEAL_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	if len(shot) < least || !strings.HasPrefix(string(shot), "\x89PNG") {
		t.Fatalf("%s looks empty (%d bytes)", what, len(shot))
	}
	t.Logf("screenshot: %s", path)
}
