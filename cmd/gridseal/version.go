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

// thisBuild is buildInfo of the running binary.
func thisBuild() console.BuildInfo {
	bi, _ := debug.ReadBuildInfo()
	return console.ResolveBuildInfo(version, commit, date, bi)
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
