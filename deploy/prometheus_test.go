package deploy_test

import (
	"log/slog"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// TestAlertRulesParseAndNameRealSeries parses the shipped alerting rules
// with Prometheus's own rule parser (YAML fields, PromQL, templates), and
// checks that every selector in every expression matches a series in a
// scrape of a running gridseal (the demo, after its tour): a renamed metric
// or a label value nothing has would leave an alert that can never fire.
func TestAlertRulesParseAndNameRealSeries(t *testing.T) {
	p := parser.NewParser(parser.Options{})
	groups, errs := rulefmt.ParseFile("prometheus/gridseal-alerts.yaml", false, model.UTF8Validation, p, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	want := map[string]bool{"GridsealChainNotWritable": false, "GridsealCheckpointStale": false, "GridsealBreakGlassUsed": false,
		"GridsealDeviceDown": false, "GridsealDenyRateSpike": false, "GridsealDiskFullWithinAWeek": false}
	url := demo(t)
	text, err := scrapeOnce(url)
	if err != nil {
		t.Fatal(err)
	}
	tp := expfmt.NewTextParser(model.UTF8Validation)
	families, err := tp.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if _, ok := want[r.Alert]; ok {
				want[r.Alert] = true
			}
			t.Run(r.Alert, func(t *testing.T) {
				expr, err := p.ParseExpr(r.Expr)
				if err != nil {
					t.Fatal(err)
				}
				for _, sel := range parser.ExtractSelectors(expr) {
					if !matchesSome(families, sel) {
						t.Errorf("no series in /metrics matches %v", sel)
					}
				}
			})
		}
	}
	for alert, found := range want {
		if !found {
			t.Errorf("no rule %s", alert)
		}
	}
}

// matchesSome says whether a sample of families has every label sel asks
// for (histograms and summaries as their _bucket, _sum and _count series).
func matchesSome(families map[string]*dto.MetricFamily, sel []*labels.Matcher) bool {
	for name, f := range families {
		for _, m := range f.GetMetric() {
			for _, series := range seriesNames(name, f.GetType()) {
				lbls := map[string]string{model.MetricNameLabel: series}
				for _, lp := range m.GetLabel() {
					lbls[lp.GetName()] = lp.GetValue()
				}
				ok := true
				for _, mt := range sel {
					if !mt.Matches(lbls[mt.Name]) {
						ok = false
						break
					}
				}
				if ok {
					return true
				}
			}
		}
	}
	return false
}

func seriesNames(name string, typ dto.MetricType) []string {
	switch typ {
	case dto.MetricType_HISTOGRAM:
		return []string{name + "_bucket", name + "_sum", name + "_count"}
	case dto.MetricType_SUMMARY:
		return []string{name, name + "_sum", name + "_count"}
	}
	return []string{name}
}
