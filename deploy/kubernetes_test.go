package deploy_test

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// manifest is one decoded Kubernetes object of deploy/kubernetes.
type manifest struct {
	file, kind, name string
	obj              any
}

// kubeManifests decodes every document of every file in deploy/kubernetes
// strictly into its Kubernetes API type (k8s.io/api): an unknown or
// misplaced field, a wrong type or an unknown kind fails.
func kubeManifests(t *testing.T) []manifest {
	t.Helper()
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	var out []manifest
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
			if strings.TrimSpace(regexp.MustCompile(`(?m)^#.*$`).ReplaceAllString(doc, "")) == "" {
				continue
			}
			var head struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
				Metadata   struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				t.Fatalf("%s document %d: %v", f, i+1, err)
			}
			var obj any
			switch head.APIVersion + " " + head.Kind {
			case "v1 ConfigMap":
				obj = &corev1.ConfigMap{}
			case "v1 Service":
				obj = &corev1.Service{}
			case "v1 PersistentVolumeClaim":
				obj = &corev1.PersistentVolumeClaim{}
			case "apps/v1 StatefulSet":
				obj = &appsv1.StatefulSet{}
			case "apps/v1 Deployment":
				obj = &appsv1.Deployment{}
			case "policy/v1 PodDisruptionBudget":
				obj = &policyv1.PodDisruptionBudget{}
			case "networking.k8s.io/v1 NetworkPolicy":
				obj = &networkingv1.NetworkPolicy{}
			default:
				t.Fatalf("%s document %d: %s %s is not a kind this test knows", f, i+1, head.APIVersion, head.Kind)
			}
			if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				t.Errorf("%s: %s %s: %v", f, head.Kind, head.Metadata.Name, err)
				continue
			}
			out = append(out, manifest{file: filepath.Base(f), kind: head.Kind, name: head.Metadata.Name, obj: obj})
		}
	}
	return out
}

func matches(sel, lbls map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if lbls[k] != v {
			return false
		}
	}
	return true
}

// TestKubernetesManifests decodes every manifest into the API types, then
// checks how they fit together, as a cluster would not until it ran them:
// selectors select their pods, Services reach named container ports,
// every ConfigMap, Secret and claim a pod mounts is there or named in the
// file's instructions; NATS runs 3 nodes routing to each other; each
// gridseal Deployment is one writer with a PodDisruptionBudget and a
// NetworkPolicy, serves Modbus on Service port 502 and keeps its keys
// 0600.
func TestKubernetesManifests(t *testing.T) {
	ms := kubeManifests(t)
	byKind := map[string][]manifest{}
	named := map[string]bool{}
	for _, m := range ms {
		byKind[m.kind] = append(byKind[m.kind], m)
		named[m.kind+"/"+m.name] = true
	}
	instructions := map[string]string{}
	for _, m := range ms {
		if _, ok := instructions[m.file]; !ok {
			b, _ := os.ReadFile(filepath.Join("kubernetes", m.file))
			instructions[m.file] = string(b)
		}
	}
	type workload struct {
		m        manifest
		labels   map[string]string
		selector map[string]string
		pod      corev1.PodSpec
	}
	var workloads []workload
	for _, m := range byKind["StatefulSet"] {
		s := m.obj.(*appsv1.StatefulSet)
		workloads = append(workloads, workload{m, s.Spec.Template.Labels, s.Spec.Selector.MatchLabels, s.Spec.Template.Spec})
		if *s.Spec.Replicas != 3 {
			t.Errorf("StatefulSet %s: %d replicas, want 3", s.Name, *s.Spec.Replicas)
		}
		conf := ""
		for _, cm := range byKind["ConfigMap"] {
			conf += cm.obj.(*corev1.ConfigMap).Data["nats.conf"]
		}
		for i := range 3 {
			route := "nats-route://" + s.Name + "-" + string(rune('0'+i)) + "." + s.Spec.ServiceName + "." + s.Namespace + ".svc:6222"
			if !strings.Contains(conf, route) {
				t.Errorf("nats.conf lacks the route %s", route)
			}
		}
		if !named["Service/"+s.Spec.ServiceName] {
			t.Errorf("StatefulSet %s: no headless Service %s", s.Name, s.Spec.ServiceName)
		}
	}
	for _, m := range byKind["Deployment"] {
		d := m.obj.(*appsv1.Deployment)
		workloads = append(workloads, workload{m, d.Spec.Template.Labels, d.Spec.Selector.MatchLabels, d.Spec.Template.Spec})
		if *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
			t.Errorf("Deployment %s: one writer is one pod: replicas 1 and Recreate", d.Name)
		}
		c := d.Spec.Template.Spec.Containers[0]
		if !strings.Contains(strings.Join(c.Args, " "), "proxy --config") {
			t.Errorf("Deployment %s runs %v", d.Name, c.Args)
		}
		if sc := d.Spec.Template.Spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
			t.Errorf("Deployment %s may run as root", d.Name)
		}
		cm := ""
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.ConfigMap != nil && named["ConfigMap/"+v.ConfigMap.Name] {
				cm += v.ConfigMap.Name
			}
			if v.Secret != nil {
				for _, vm := range c.VolumeMounts {
					if vm.Name == v.Name {
						t.Errorf("Deployment %s: the proxy mounts Secret %s itself: group-readable keys are refused; copy them 0600 in an init container", d.Name, v.Secret.SecretName)
					}
				}
			}
		}
		for _, want := range []string{"PodDisruptionBudget", "NetworkPolicy"} {
			found := false
			for _, o := range byKind[want] {
				var sel map[string]string
				switch x := o.obj.(type) {
				case *policyv1.PodDisruptionBudget:
					sel = x.Spec.Selector.MatchLabels
				case *networkingv1.NetworkPolicy:
					sel = x.Spec.PodSelector.MatchLabels
				}
				found = found || matches(sel, d.Spec.Template.Labels)
			}
			if !found {
				t.Errorf("Deployment %s: no %s selects its pods", d.Name, want)
			}
		}
		modbus := false
		for _, o := range byKind["Service"] {
			svc := o.obj.(*corev1.Service)
			if !matches(svc.Spec.Selector, d.Spec.Template.Labels) {
				continue
			}
			for _, p := range svc.Spec.Ports {
				if p.Port == 502 && p.TargetPort.StrVal == "modbus" {
					modbus = true
				}
			}
		}
		if !modbus {
			t.Errorf("Deployment %s: no Service port 502 to its modbus port", d.Name)
		}
	}
	for _, w := range workloads {
		if !matches(w.selector, w.labels) {
			t.Errorf("%s %s: selector %v does not select its pods %v", w.m.kind, w.m.name, w.selector, w.labels)
		}
		for _, v := range w.pod.Volumes {
			var ref string
			switch {
			case v.ConfigMap != nil:
				ref = "ConfigMap/" + v.ConfigMap.Name
			case v.Secret != nil:
				ref = "Secret/" + v.Secret.SecretName
			case v.PersistentVolumeClaim != nil:
				ref = "PersistentVolumeClaim/" + v.PersistentVolumeClaim.ClaimName
			default:
				continue
			}
			name := ref[strings.IndexByte(ref, '/')+1:]
			if !named[ref] && !strings.Contains(instructions[w.m.file], "create secret generic "+name) &&
				!strings.Contains(instructions[w.m.file], "create configmap "+name) {
				t.Errorf("%s %s mounts %s, which neither the manifests nor their instructions create", w.m.kind, w.m.name, ref)
			}
		}
	}
	for _, o := range byKind["Service"] {
		svc := o.obj.(*corev1.Service)
		for _, p := range svc.Spec.Ports {
			ok := false
			for _, w := range workloads {
				if !matches(svc.Spec.Selector, w.labels) {
					continue
				}
				for _, c := range w.pod.Containers {
					for _, cp := range c.Ports {
						ok = ok || cp.Name == p.TargetPort.StrVal || (p.TargetPort.StrVal == "" && cp.ContainerPort == p.TargetPort.IntVal)
					}
				}
			}
			if !ok {
				t.Errorf("Service %s port %d reaches no container port %s", svc.Name, p.Port, p.TargetPort.String())
			}
		}
	}
	for _, o := range byKind["ConfigMap"] {
		if cfg, ok := o.obj.(*corev1.ConfigMap).Data["gridseal.yaml"]; ok && !bytes.Contains([]byte(cfg), []byte("listen: 0.0.0.0:5020")) {
			t.Errorf("ConfigMap %s: the proxy does not listen on the container port 5020", o.name)
		}
	}
}
