package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/gridseal/gridseal/internal/keys"
)

// WriteKeysetEntry writes one YAML list entry naming a person (with their
// groups, if any) and their public keyset inline, as policies list
// approvers and policy roots list admins, so the file's digest covers the
// keys.
func WriteKeysetEntry(b *strings.Builder, name string, groups []string, publicJSON []byte) {
	fmt.Fprintf(b, "  - name: %s\n", name)
	if len(groups) > 0 {
		fmt.Fprintf(b, "    groups: [%s]\n", strings.Join(groups, ", "))
	}
	b.WriteString("    keyset: |\n")
	for _, line := range strings.Split(strings.TrimSpace(string(publicJSON)), "\n") {
		b.WriteString("      " + line + "\n")
	}
}

// FormatRoot returns a root trust file (LoadRoot reads it) naming the
// admins whose public keysets are at paths, each named by its file name
// without ".public.json", of whom threshold must sign a policy.
func FormatRoot(threshold int, paths []string) ([]byte, error) {
	if threshold < 1 || threshold > len(paths) {
		return nil, fmt.Errorf("threshold %d: want 1..%d", threshold, len(paths))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Policy admins: a policy is in force only with %d of their signatures.\nthreshold: %d\nadmins:\n", threshold, threshold)
	if err := writeEntries(&b, nil, paths); err != nil {
		return nil, err
	}
	return []byte(b.String()), nil
}

// FormatApprovers returns a policy's approvers section naming the people
// whose public keysets are at paths (named as FormatRoot names admins), all
// in groups, to be appended to the policy file before it is signed.
func FormatApprovers(groups []string, paths []string) ([]byte, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("name at least one approver's public keyset")
	}
	var b strings.Builder
	b.WriteString("\n# People who may propose and approve commands that rules mark requires:.\napprovers:\n")
	if err := writeEntries(&b, groups, paths); err != nil {
		return nil, err
	}
	return []byte(b.String()), nil
}

func writeEntries(b *strings.Builder, groups []string, paths []string) error {
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if _, err := keys.LoadVerifier(path); err != nil {
			return err
		}
		WriteKeysetEntry(b, strings.TrimSuffix(filepath.Base(path), ".public.json"), groups, data)
	}
	return nil
}
