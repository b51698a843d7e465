package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/gridseal/gridseal/simulators"
	"github.com/gridseal/gridseal/simulators/simtest"
)

// TestConsoleShowsObserveMode opens the console of a proxy whose policy
// puts the inverter in observe mode, in headless Chromium: the banner names
// the device, and a write its rules deny, forwarded, is marked WOULD DENY.
func TestConsoleShowsObserveMode(t *testing.T) {
	simAddr, _ := simtest.Start(t, simulators.Options{})
	c := newCommissioning(t)
	web := freeAddr(t)
	cfg, err := os.ReadFile(c.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	c.write("gridseal.yaml", strings.Replace(string(cfg), `console: {listen: "off"}`, `console: {listen: "`+web+`"}`, 1))
	c.sign(fmt.Sprintf(observing, simAddr))
	c.start()
	defer c.stop()
	waitListening(t, "the console", web)

	p := headless(t, t.Context(), 1200, 900, 60*time.Second)
	p.run("open the console", chromedp.Navigate("http://"+web+"/"), chromedp.WaitVisible("#stream"))
	poll := func(what, expr string) {
		t.Helper()
		p.poll(what, expr, 10*time.Second)
	}
	poll("the device entering observe mode, in the stream", `[...document.querySelectorAll('#stream tbody tr')].some(r =>
		r.cells[7].textContent === 'policy mode' && r.cells[8].textContent.startsWith('enters observe mode'))`)
	poll("the observe-mode banner", `(() => { const b = document.querySelector('#observe-banner');
		return !b.hidden && b.offsetHeight > 0 && b.textContent.startsWith('OBSERVE MODE: inverter-1, battery-1'); })()`)
	if err := modbusClient(t, c.listen, simulators.UnitInverter).WriteRegister(simulators.InverterLimitPct, 50); err != nil {
		t.Fatalf("a write in observe mode: %v", err)
	}
	poll("the forwarded write marked WOULD DENY", `[...document.querySelectorAll('#stream tbody tr')].some(r =>
		r.textContent.includes('40127+1') && r.querySelector('.badge.would-deny')?.textContent === 'WOULD DENY')`)
	saveShot(t, p.ctx, "console-observe.png")
}
