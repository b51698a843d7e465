package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/gridseal/gridseal/console"
)

// version, commit and date are set at build time: `make build` and `make
// release` pass -ldflags "-X main.version=… -X main.commit=… -X
// main.date=…" (the nearest git tag, the commit, the commit's time). A
// binary built without them falls back on the Go build's VCS stamp.
var (
	version = "dev"
	commit  = ""
	date    = ""
)

// buildInfo is what this binary says of its build: the ldflags where set,
// else the module version and VCS stamp the Go toolchain recorded in bi
// (nil: none), else "dev" and "unknown".
func buildInfo(version, commit, date string, bi *debug.BuildInfo) console.BuildInfo {
	b := console.BuildInfo{Version: version, Commit: commit, Date: date}
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

// thisBuild is buildInfo of the running binary.
func thisBuild() console.BuildInfo {
	bi, _ := debug.ReadBuildInfo()
	return buildInfo(version, commit, date, bi)
}

func versionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit and build date",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			b := thisBuild()
			_, err := fmt.Fprintf(g.stdout, "gridseal %s\ncommit: %s\nbuilt:  %s\ngo:     %s %s/%s\n",
				b.Version, b.Commit, b.Date, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return err
		},
	}
}
