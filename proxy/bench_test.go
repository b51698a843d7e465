package proxy_test

import (
	"fmt"
	"net"
	"testing"

	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/proxy"
)

// fastRead answers function 3 with zeros, without allocating.
func fastRead(f modbus.Frame) []byte {
	var resp [2 + 2*modbus.MaxReadRegisters]byte
	q := int(f.PDU[4])
	resp[0], resp[1] = 3, byte(2*q)
	return resp[:2+2*q]
}

// BenchmarkRoundTrip measures one FC 3 read of 10 registers, request to
// reply, from one client: straight to the device, and through the proxy
// (decide and log-record included). allocs/op counts the whole process, so
// the difference between the two is the proxy's share.
func BenchmarkRoundTrip(b *testing.B) {
	up := startUpstream(b, fastRead)
	up.forget = true
	pol, err := policy.Parse("bench.yaml", fmt.Appendf(nil, openPolicy, up.addr()))
	if err != nil {
		b.Fatal(err)
	}
	srv, err := proxy.New(proxy.Config{Limits: proxy.Limits{RequestsPerSecond: 1e9, Burst: 1 << 30}},
		[]proxy.Device{{Name: "plc", Upstream: up.addr()}},
		policy.NewEngine(pol, zap.NewNop()), audit.NewLogRecorder(zap.NewNop(), 0), zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	proxied, _ := serve(b, srv, plcRoute())
	b.Run("proxied-16-clients", func(b *testing.B) { roundTrips(b, proxied, 8) })
	for _, target := range []struct{ name, addr string }{{"direct", up.addr()}, {"proxied", proxied}} {
		b.Run(target.name, func(b *testing.B) {
			c, err := net.Dial("tcp", target.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			rd := modbus.NewReader(c)
			frame := modbus.AppendFrame(nil, 1, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 10))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(frame); err != nil {
					b.Fatal(err)
				}
				f, err := rd.ReadFrame()
				if err != nil || f.PDU[0] != 3 {
					b.Fatalf("reply %x: %v", f.PDU, err)
				}
			}
		})
	}
}

// roundTrips runs FC 3 reads through addr from 2*GOMAXPROCS*par clients at
// once, each its own connection with one request in flight, as many
// SCADA masters would: the proxy then shares one device connection among
// them.
func roundTrips(b *testing.B, addr string, par int) {
	frame := modbus.AppendFrame(nil, 1, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 10))
	b.SetParallelism(par)
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		rd := modbus.NewReader(c)
		for pb.Next() {
			if _, err := c.Write(frame); err != nil {
				b.Error(err)
				return
			}
			if f, err := rd.ReadFrame(); err != nil || f.PDU[0] != 3 {
				b.Errorf("reply %x: %v", f.PDU, err)
				return
			}
		}
	})
}
