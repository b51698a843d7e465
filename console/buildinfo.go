package console

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// BuildInfo names the binary that runs, as gridseal version prints it.
type BuildInfo struct {
	Version, Commit, Date string
}

// RegisterBuildInfo registers gridseal_build_info, always 1, whose labels
// say which build runs: an alert or a dashboard can tell the instances of
// a fleet that still run an old one.
func RegisterBuildInfo(reg prometheus.Registerer, b BuildInfo) {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "gridseal_build_info",
		Help: "Always 1: the version, commit and build date of the gridseal that runs, and the Go it was built with."},
		[]string{"version", "commit", "date", "goversion"})
	g.WithLabelValues(b.Version, b.Commit, b.Date, runtime.Version()).Set(1)
	reg.MustRegister(g)
}

// ResolveBuildInfo is what a binary says of its build: the ldflags where set,
// else the module version and VCS stamp the Go toolchain recorded in bi
// (nil: none), else "dev" and "unknown".
func ResolveBuildInfo(version, commit, date string, bi *debug.BuildInfo) BuildInfo {
	b := BuildInfo{Version: version, Commit: commit, Date: date}
	if bi != nil {
		if (b.Version == "" || b.Version == "dev") && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			b.Version = bi.Main.Version // go install …@vX.Y.Z
		}
		var dirty bool
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if b.Commit == "" {
					b.Commit = s.Value
				}
			case "vcs.time":
				if b.Date == "" {
					b.Date = s.Value
				}
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if dirty && commit == "" && b.Commit != "" {
			b.Commit += "-dirty"
		}
	}
	for _, f := range []*string{&b.Commit, &b.Date} {
		if *f == "" {
			*f = "unknown"
		}
	}
	if b.Version == "" {
		b.Version = "dev"
	}
	return b
}
