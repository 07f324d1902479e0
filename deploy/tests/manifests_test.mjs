// Renders the chart with default, CPU and GPU values (helm template), validates every object against
// the Kubernetes / prometheus-operator schemas of kubernetes-models, and runs policy checks:
// probe ports exist on the container, Service selectors match pod labels and their target ports
// exist, the ServiceMonitor selects every component's metrics port, every container has
// requests and limits, GPU values put nvidia.com/gpu in the worker limits, and more.
// With --self-test it also breaks rendered objects on purpose and expects each check to notice.
import path from "node:path";
import { Checks, helmBin, importTool, repoRoot, run } from "./lib.mjs";

const YAML = (await importTool("yaml/dist/index.js")).default;
const chart = path.join(repoRoot, "deploy/k8s/moe-serving");
const checks = new Checks("deploy_manifests");

const MODEL_FILES = {
  "v1": "kubernetes-models/v1/index.js",
  "apps/v1": "kubernetes-models/apps/v1/index.js",
  "autoscaling/v2": "kubernetes-models/autoscaling/v2/index.js",
  "policy/v1": "kubernetes-models/policy/v1/index.js",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js",
};
const models = {};
for (const [api, file] of Object.entries(MODEL_FILES)) models[api] = await importTool(file);

const BINARIES = new Set(["moe-router", "moe-attention-worker", "moe-expert-worker", "moectl"]);
const COMPONENTS = ["router", "attention", "expert"];

function render(valuesFile) {
  const args = ["template", "moe", chart, "--namespace", "moe-serving"];
  if (valuesFile) args.push("-f", path.join(chart, valuesFile));
  return YAML.parseAllDocuments(run(helmBin, args)).map((d) => d.toJS()).filter(Boolean);
}

const podSpecOf = (o) => (o.kind === "Deployment" || o.kind === "StatefulSet") ? o.spec.template.spec : null;
const podLabelsOf = (o) => o.spec.template.metadata?.labels ?? {};
const allContainers = (spec) => [...(spec.initContainers ?? []), ...spec.containers];
const matchesLabels = (selector, labels) => Object.entries(selector ?? {}).every(([k, v]) => labels[k] === v);
function matchesSelector(sel, labels) {
  if (!matchesLabels(sel.matchLabels, labels)) return false;
  return (sel.matchExpressions ?? []).every((e) => {
    const has = Object.hasOwn(labels, e.key);
    switch (e.operator) {
      case "In": return has && e.values.includes(labels[e.key]);
      case "NotIn": return !has || !e.values.includes(labels[e.key]);
      case "Exists": return has;
      case "DoesNotExist": return !has;
      default: return false;
    }
  });
}
// A probe/service port (number or name) exists among the container's ports.
const portExists = (ports, p) => (ports ?? []).some((cp) => cp.containerPort === p || cp.name === p);

// Returns a list of problems; empty when the set of objects is fine. `gpu` says whether worker
// containers must carry nvidia.com/gpu limits.
export function policyProblems(objs, { gpu }) {
  const problems = [];
  const bad = (what) => problems.push(what);
  const key = (o) => `${o.kind}/${o.metadata?.name}`;
  const workloads = objs.filter(podSpecOf);
  const services = objs.filter((o) => o.kind === "Service");
  const configMaps = objs.filter((o) => o.kind === "ConfigMap");

  // Schema validation (types, required fields, enums) by kubernetes-models.
  for (const o of objs) {
    const mod = models[o.apiVersion];
    const Model = mod?.[o.kind];
    if (!Model) { bad(`${key(o)}: no schema for ${o.apiVersion} ${o.kind}`); continue; }
    try { new Model(o).validate(); } catch (e) { bad(`${key(o)}: schema: ${e.message}`); }
  }

  for (const o of objs) {
    const l = o.metadata?.labels ?? {};
    for (const k of ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
      "app.kubernetes.io/version", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"]) {
      if (!l[k]) bad(`${key(o)}: missing label ${k}`);
    }
  }

  for (const w of workloads) {
    const spec = podSpecOf(w);
    if (!matchesSelector(w.spec.selector, podLabelsOf(w))) bad(`${key(w)}: selector does not match its pod labels`);
    const volumes = new Set((spec.volumes ?? []).map((v) => v.name));
    for (const c of allContainers(spec)) {
      const ck = `${key(w)} container ${c.name}`;
      for (const kind of ["requests", "limits"]) {
        for (const r of ["cpu", "memory"]) {
          if (c.resources?.[kind]?.[r] === undefined) bad(`${ck}: no resources.${kind}.${r}`);
        }
      }
      if (!BINARIES.has(c.command?.[0])) bad(`${ck}: command ${c.command?.[0]} is not one of the image's binaries`);
      for (const m of c.volumeMounts ?? []) if (!volumes.has(m.name)) bad(`${ck}: mount of unknown volume ${m.name}`);
      for (const ref of c.envFrom ?? []) {
        const name = ref.configMapRef?.name;
        if (name && !configMaps.some((cm) => cm.metadata.name === name)) bad(`${ck}: envFrom unknown ConfigMap ${name}`);
      }
      // $(VAR) in args must be defined by env or by the ConfigMaps it imports.
      const defined = new Set((c.env ?? []).map((e) => e.name));
      for (const ref of c.envFrom ?? []) {
        const cm = configMaps.find((x) => x.metadata.name === ref.configMapRef?.name);
        Object.keys(cm?.data ?? {}).forEach((k) => defined.add(k));
      }
      for (const a of c.args ?? []) {
        for (const [, v] of String(a).matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)) {
          if (!defined.has(v)) bad(`${ck}: argument uses undefined $(${v})`);
        }
      }
      const hasGpu = c.resources?.limits?.["nvidia.com/gpu"] !== undefined;
      const isWorker = /-worker$/.test(c.name);
      if (gpu && isWorker && !(Number(c.resources.limits["nvidia.com/gpu"]) >= 1)) bad(`${ck}: GPU values need nvidia.com/gpu in limits`);
      if (!gpu && hasGpu) bad(`${ck}: CPU values must not ask for nvidia.com/gpu`);
      if (c.resources?.requests?.["nvidia.com/gpu"] !== undefined && c.resources.requests["nvidia.com/gpu"] !== c.resources.limits?.["nvidia.com/gpu"]) {
        bad(`${ck}: nvidia.com/gpu requests must equal limits`);
      }
    }
    for (const c of spec.containers) {
      const ck = `${key(w)} container ${c.name}`;
      for (const probe of ["startupProbe", "livenessProbe", "readinessProbe"]) {
        const p = c[probe];
        if (!p) { bad(`${ck}: no ${probe}`); continue; }
        if (!p.grpc) bad(`${ck}: ${probe} is not a native gRPC probe`);
        const port = p.grpc?.port ?? p.httpGet?.port ?? p.tcpSocket?.port;
        if (!portExists(c.ports, port)) bad(`${ck}: ${probe} port ${port} is not a container port`);
      }
      const s = c.startupProbe;
      if (s && s.periodSeconds * s.failureThreshold < 60) bad(`${ck}: startup probe budget below a minute`);
      if (!portExists(c.ports, "metrics")) bad(`${ck}: no port named metrics`);
    }
  }

  // Services select pods, and their target ports exist on those pods.
  for (const s of services) {
    const pods = workloads.filter((w) => matchesLabels(s.spec.selector, podLabelsOf(w)));
    if (!s.spec.selector || pods.length === 0) { bad(`${key(s)}: selector matches no pod template`); continue; }
    for (const sp of s.spec.ports) {
      const target = sp.targetPort ?? sp.port;
      for (const w of pods) {
        if (!podSpecOf(w).containers.some((c) => portExists(c.ports, target))) {
          bad(`${key(s)}: targetPort ${target} not on pods of ${key(w)}`);
        }
      }
    }
  }
  for (const w of workloads.filter((o) => o.kind === "StatefulSet")) {
    const s = services.find((x) => x.metadata.name === w.spec.serviceName);
    if (!s) bad(`${key(w)}: serviceName ${w.spec.serviceName} has no Service`);
    else if (s.spec.clusterIP !== "None") bad(`${key(w)}: governing Service ${s.metadata.name} is not headless`);
    else if (!matchesLabels(s.spec.selector, podLabelsOf(w))) bad(`${key(w)}: governing Service does not select its pods`);
  }
  // Each component's pods sit behind exactly one Service (so they are scraped once).
  for (const w of workloads) {
    const n = services.filter((s) => matchesLabels(s.spec.selector, podLabelsOf(w))).length;
    if (n !== 1) bad(`${key(w)}: pods are selected by ${n} Services, want 1`);
  }

  // HPA and PDB targets.
  for (const h of objs.filter((o) => o.kind === "HorizontalPodAutoscaler")) {
    const t = h.spec.scaleTargetRef;
    if (!workloads.some((w) => w.kind === t.kind && w.metadata.name === t.name)) bad(`${key(h)}: target ${t.kind}/${t.name} missing`);
  }
  for (const p of objs.filter((o) => o.kind === "PodDisruptionBudget")) {
    if (!workloads.some((w) => matchesSelector(p.spec.selector, podLabelsOf(w)))) bad(`${key(p)}: selects no pods`);
  }

  // ServiceMonitor: selects the router, attention and expert Services and their metrics ports.
  for (const sm of objs.filter((o) => o.kind === "ServiceMonitor")) {
    const selected = services.filter((s) => matchesSelector(sm.spec.selector, s.metadata.labels ?? {}));
    for (const comp of COMPONENTS) {
      if (!selected.some((s) => s.metadata.labels["app.kubernetes.io/component"] === comp)) {
        bad(`${key(sm)}: does not select the ${comp} Service`);
      }
    }
    for (const ep of sm.spec.endpoints) {
      for (const s of selected) {
        const sp = s.spec.ports.find((p) => p.name === ep.port);
        if (!sp) { bad(`${key(sm)}: endpoint port ${ep.port} not named on ${key(s)}`); continue; }
        const pods = workloads.filter((w) => matchesLabels(s.spec.selector, podLabelsOf(w)));
        for (const w of pods) {
          const target = sp.targetPort ?? sp.port;
          const c = podSpecOf(w).containers.find((x) => portExists(x.ports, target));
          const cp = c?.ports.find((p) => p.containerPort === target || p.name === target);
          if (cp?.name !== "metrics") bad(`${key(sm)}: ${key(s)} port ${ep.port} does not reach the metrics port of ${key(w)}`);
        }
      }
    }
  }
  return problems;
}

function expectComponents(objs, variant) {
  const has = (kind, comp) => objs.some((o) => o.kind === kind && o.metadata.labels["app.kubernetes.io/component"] === comp);
  checks.ok(has("Deployment", "router"), `${variant}: router Deployment`);
  checks.ok(has("StatefulSet", "attention") && has("StatefulSet", "expert"), `${variant}: worker StatefulSets`);
  checks.ok(has("Service", "router"), `${variant}: router Service`);
  checks.ok(objs.some((o) => o.kind === "ConfigMap"), `${variant}: ConfigMap`);
}

// Mutations that each must be caught; proves the checks can fail.
const MUTATIONS = [
  ["probe port", (o) => { o.find((x) => x.kind === "StatefulSet").spec.template.spec.containers[0].readinessProbe.grpc.port = 1234; }],
  ["selector", (o) => { o.find((x) => x.kind === "Service").spec.selector["app.kubernetes.io/component"] = "nope"; }],
  ["resources", (o) => { delete o.find((x) => x.kind === "Deployment").spec.template.spec.containers[0].resources.limits; }],
  ["schema type", (o) => { o.find((x) => x.kind === "Deployment").spec.replicas = "two"; }],
  ["ServiceMonitor port", (o) => { const sm = o.find((x) => x.kind === "ServiceMonitor"); sm.spec.endpoints[0].port = "grpc"; }],
  ["gpu limit", (o) => { delete o.find((x) => x.kind === "StatefulSet").spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"]; }],
  ["undefined env in args", (o) => { o.find((x) => x.kind === "StatefulSet").spec.template.spec.containers[0].args.push("--x=$(MOE_NOPE)"); }],
];

const variants = [["default", null, false], ["cpu", "values-cpu.yaml", false], ["gpu", "values-gpu.yaml", true]];
const rendered = {};
for (const [name, values, gpu] of variants) {
  let objs;
  try { objs = render(values); } catch (e) { checks.ok(false, `${name}: helm template failed: ${e.stderr ?? e.message}`); continue; }
  rendered[name] = objs;
  expectComponents(objs, name);
  const problems = policyProblems(objs, { gpu });
  problems.forEach((p) => checks.ok(false, `${name}: ${p}`));
  checks.ok(problems.length === 0, `${name}: ${objs.length} objects pass schema and policy checks`);
}
checks.ok(rendered.gpu?.some((o) => o.kind === "ServiceMonitor"), "gpu values render a ServiceMonitor");
checks.ok(!rendered.default?.some((o) => o.kind === "ServiceMonitor"), "ServiceMonitor is off by default");

if (process.argv.includes("--self-test") && rendered.gpu) {
  for (const [what, mutate] of MUTATIONS) {
    const objs = structuredClone(rendered.gpu);
    mutate(objs);
    checks.ok(policyProblems(objs, { gpu: true }).length > 0, `self-test: breaking the ${what} is detected`);
  }
}
checks.finish();
