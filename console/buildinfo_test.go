package console

import (
	"runtime/debug"
	"testing"
)

// TestBuildInfo: the ldflags make release sets win; without them the Go
// toolchain's VCS stamp (and a go install's module version) fills in;
// without either the build says it is dev, of an unknown commit.
func TestBuildInfo(t *testing.T) {
	stamped := &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.time", Value: "2026-03-01T10:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	for _, tc := range []struct {
		name                  string
		version, commit, date string
		bi                    *debug.BuildInfo
		want                  BuildInfo
	}{
		{"ldflags", "v1.2.0", "feedbeef", "2026-04-01T00:00:00Z", stamped, BuildInfo{Version: "v1.2.0", Commit: "feedbeef", Date: "2026-04-01T00:00:00Z"}},
		{"vcs stamp of a dirty tree", "dev", "", "", stamped, BuildInfo{Version: "dev", Commit: "0123abcd-dirty", Date: "2026-03-01T10:00:00Z"}},
		{"go install of a tag", "dev", "", "", &debug.BuildInfo{Main: debug.Module{Version: "v1.3.0"}}, BuildInfo{Version: "v1.3.0", Commit: "unknown", Date: "unknown"}},
		{"nothing", "dev", "", "", nil, BuildInfo{Version: "dev", Commit: "unknown", Date: "unknown"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ResolveBuildInfo(tc.version, tc.commit, tc.date, tc.bi); got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
