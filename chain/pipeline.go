package chain

import (
	"runtime"
	"sync"
)

// pipelineBytes bounds the block messages a pipeline holds at once (one
// more if a single block is larger).
const pipelineBytes = 64 << 20

// pipelineDepth is how many blocks per worker a pipeline holds at once.
const pipelineDepth = 4

// pipeline runs checkBlock, each block's checks on its own, on
// GOMAXPROCS goroutines, ahead of the checks of its place in the chain:
// it hands each message with what checkBlock found to each, in the order
// they were added and on the goroutine that calls add or flush, so those
// checks, and what they report, are as without it.
type pipeline struct {
	each  func(m *Msg, c *blockCheck) error
	work  chan *slot
	ring  []*slot // the window; ring[head] is the oldest of n
	head  int
	n     int
	bytes int // of the n messages
	wg    sync.WaitGroup
}

type slot struct {
	m    *Msg
	c    blockCheck
	done chan struct{} // checkBlock finished
}

func newPipeline(trust *Trust, each func(m *Msg, c *blockCheck) error) *pipeline {
	workers := runtime.GOMAXPROCS(0)
	p := &pipeline{each: each, work: make(chan *slot, pipelineDepth*workers), ring: make([]*slot, pipelineDepth*workers)}
	for i := range p.ring {
		p.ring[i] = &slot{done: make(chan struct{}, 1)}
	}
	for range workers {
		p.wg.Go(func() {
			var scratch []Hash
			for s := range p.work {
				checkBlock(trust, s.m, &s.c, &scratch)
				s.done <- struct{}{}
			}
		})
	}
	return p
}

// add queues m, first handing each the oldest messages if the window is
// full, then those already checked. It returns each's error.
func (p *pipeline) add(m *Msg) error {
	for p.n == len(p.ring) || (p.n > 0 && p.bytes+len(m.Data) > pipelineBytes) {
		if err := p.next(); err != nil {
			return err
		}
	}
	s := p.ring[(p.head+p.n)%len(p.ring)]
	s.m = m
	p.n++
	p.bytes += len(m.Data)
	p.work <- s
	for p.n > 0 && len(p.ring[p.head].done) > 0 {
		if err := p.next(); err != nil {
			return err
		}
	}
	return nil
}

// next waits for the oldest message's checks and hands it to each.
func (p *pipeline) next() error {
	s := p.ring[p.head]
	<-s.done
	p.head = (p.head + 1) % len(p.ring)
	p.n--
	p.bytes -= len(s.m.Data)
	m := s.m
	s.m = nil
	return p.each(m, &s.c)
}

// flush hands each every message still queued, in order.
func (p *pipeline) flush() error {
	for p.n > 0 {
		if err := p.next(); err != nil {
			return err
		}
	}
	return nil
}

// close stops the workers once they have checked what is queued.
func (p *pipeline) close() {
	close(p.work)
	p.wg.Wait()
}
