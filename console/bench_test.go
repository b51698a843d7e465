package console_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/gridseal/gridseal/internal/loadgen"
)

// BenchmarkReadPathWithViewers measures proxied read throughput with no
// console viewers and with 100 viewers on the live event stream,
// interleaved in rounds; the ratio is what the viewers cost the proxy.
// Run it with -benchtime 1x: each iteration runs the whole comparison.
func BenchmarkReadPathWithViewers(b *testing.B) {
	r := startB(b)
	const rounds, per, clients = 3, 2 * time.Second, 16
	for b.Loop() {
		var rps [2]float64
		for round := 0; round < rounds; round++ {
			for k, viewers := range []int{0, 100} {
				stop := watch(r.web.URL, viewers)
				res, err := loadgen.Run(b.Context(), loadgen.Config{Addr: r.proxyAddr, Clients: clients, Pipeline: 1,
					Duration: per, Unit: 1, ReadSpan: 100})
				seen := stop()
				if err != nil || res.Errors > 0 {
					b.Fatalf("load: %v, %d errors", err, res.Errors)
				}
				if viewers > 0 && seen < viewers {
					b.Fatalf("only %d of %d viewers received events", seen, viewers)
				}
				rps[k] += res.RPS() / rounds
			}
		}
		b.ReportMetric(rps[0], "rps-0-viewers")
		b.ReportMetric(rps[1], "rps-100-viewers")
		b.ReportMetric(rps[1]/rps[0], "ratio")
	}
}

// watch connects n viewers to the event stream, each reading and
// discarding; stop disconnects them and says how many received events.
func watch(base string, n int) (stop func() int) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := 0
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, "GET", base+"/api/events", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return
			}
			defer resp.Body.Close()
			// Count the viewer once it has an event, then read and discard
			// as a browser would, without parsing.
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				if len(sc.Bytes()) > 6 {
					mu.Lock()
					got++
					mu.Unlock()
					break
				}
			}
			_, _ = io.Copy(io.Discard, resp.Body)
		}()
	}
	return func() int {
		cancel()
		wg.Wait()
		return got
	}
}
