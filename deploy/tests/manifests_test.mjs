// Renders the chart with default, CPU and GPU values (helm template), validates every object against
// the Kubernetes / prometheus-operator schemas of kubernetes-models, and runs policy checks:
// probe ports exist on the container, Service selectors match pod labels and their target ports
// exist, the ServiceMonitor selects every component's metrics port, every container has
// requests and limits, GPU values put nvidia.com/gpu in the worker limits, every service runs
// either mTLS with its files mounted from a Secret or --insecure, probes use the plaintext health
// port when the gRPC port wants TLS, cert-manager Certificates name the role of the pods that mount
// them, NetworkPolicies select existing pods and ports, and more. It then renders the chart with
// TLS off, with a cert-manager issuer, with API keys and public TLS, with the live balancer (a moectl
// pod: no probes, ports or Service; its mTLS files are flags), with attention and joinable expert
// workers autoscaled on cost (KEDA ScaledObjects), and checks what each gives.
// With --self-test it also breaks rendered objects on purpose and expects each check to notice.
import fs from "node:fs";
import os from "node:os";
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
  "networking.k8s.io/v1": "kubernetes-models/networking.k8s.io/v1/index.js",
  "cert-manager.io/v1": "@kubernetes-models/cert-manager/cert-manager.io/v1/index.js",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js",
};
const models = {};
for (const [api, file] of Object.entries(MODEL_FILES)) models[api] = await importTool(file);

const BINARIES = new Set(["moe-router", "moe-attention-worker", "moe-expert-worker", "moectl"]);
const COMPONENTS = ["router", "attention", "expert"];
// The role (certificate common name, common/rpc/tls.h) of each service binary: its own name.
const ROLE_OF_BINARY = { "moe-router": "moe-router", "moe-attention-worker": "moe-attention-worker", "moe-expert-worker": "moe-expert-worker", "moectl": "moe-operator" };
// A tool pod (moectl, e.g. the live balancer) serves nothing: no probes, metrics port or Service.
const isTool = (c) => c.command?.[0] === "moectl";
// A tool's mTLS files and --insecure, from its flags (--tls-ca=FILE ...).
function toolTlsFlags(c) {
  const out = {};
  for (const a of c.args ?? []) {
    const m = String(a).match(/^--(tls-ca|tls-cert|tls-key)=(.*)$/);
    if (m) out[{ "tls-ca": "MOE_TLS_CA", "tls-cert": "MOE_TLS_CERT", "tls-key": "MOE_TLS_KEY" }[m[1]]] = m[2];
    if (a === "--insecure") out.MOE_INSECURE = "true";
  }
  return out;
}
const CLUSTER_SERVER_NAME = "moe-cluster.internal";

// `sets`: --set arguments, e.g. ["tls.enabled=false"].
function render(valuesFile, sets = []) {
  const args = ["template", "moe", chart, "--namespace", "moe-serving"];
  if (valuesFile) args.push("-f", path.join(chart, valuesFile));
  for (const s of sets) args.push("--set", s);
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
const portNumber = (ports, p) => (ports ?? []).find((cp) => cp.containerPort === p || cp.name === p)?.containerPort;
const probePort = (p) => p?.grpc?.port ?? p?.httpGet?.port ?? p?.tcpSocket?.port;
const PROBES = ["startupProbe", "livenessProbe", "readinessProbe"];

// The environment a container sees: its ConfigMaps (envFrom), then its own env values.
function effectiveEnv(c, configMaps) {
  const env = {};
  for (const ref of c.envFrom ?? []) {
    const cm = configMaps.find((x) => x.metadata.name === ref.configMapRef?.name);
    Object.assign(env, cm?.data ?? {});
  }
  for (const e of c.env ?? []) env[e.name] = e.value ?? (e.valueFrom ? "<from>" : "");
  return env;
}

// Where a file path of a container comes from: { volume, key } when a mount of the pod's Secret
// volume provides that file (its items, or any key when the volume lists none), else null.
function secretFileSource(spec, c, file) {
  for (const m of c.volumeMounts ?? []) {
    const dir = m.mountPath.replace(/\/$/, "");
    if (!file.startsWith(dir + "/")) continue;
    const rel = file.slice(dir.length + 1);
    const v = (spec.volumes ?? []).find((x) => x.name === m.name);
    if (!v?.secret) return null;
    const items = v.secret.items;
    if (items && !items.some((i) => i.path === rel)) return null;
    return { volume: v, mount: m, key: items ? items.find((i) => i.path === rel).key : rel };
  }
  return null;
}

// A KEDA ScaledObject: it targets a StatefulSet of the render, min <= max replicas, and each trigger
// is a Prometheus query with a threshold.
function scaledObjectProblems(so, workloads) {
  const out = [];
  const t = so.spec?.scaleTargetRef ?? {};
  if (t.apiVersion !== "apps/v1" || !workloads.some((w) => w.kind === t.kind && w.metadata.name === t.name)) {
    out.push(`target ${t.kind}/${t.name} missing`);
  }
  if (!(Number.isInteger(so.spec?.minReplicaCount) && Number.isInteger(so.spec?.maxReplicaCount) &&
    so.spec.minReplicaCount >= 0 && so.spec.minReplicaCount <= so.spec.maxReplicaCount)) {
    out.push(`replica counts ${so.spec?.minReplicaCount}..${so.spec?.maxReplicaCount}`);
  }
  const triggers = so.spec?.triggers ?? [];
  if (triggers.length === 0) out.push("no triggers");
  for (const tr of triggers) {
    if (tr.type !== "prometheus" || !tr.metadata?.query || !tr.metadata?.serverAddress || !tr.metadata?.threshold) {
      out.push(`trigger ${tr.type}: needs a Prometheus serverAddress, query and threshold`);
    }
  }
  return out;
}

// Returns a list of problems; empty when the set of objects is fine. `gpu` says whether worker
// containers must carry nvidia.com/gpu limits.
export function policyProblems(objs, { gpu }) {
  const problems = [];
  const bad = (what) => problems.push(what);
  const key = (o) => `${o.kind}/${o.metadata?.name}`;
  const workloads = objs.filter(podSpecOf);
  const services = objs.filter((o) => o.kind === "Service");
  const configMaps = objs.filter((o) => o.kind === "ConfigMap");

  // Schema validation (types, required fields, enums) by kubernetes-models. KEDA's ScaledObject has
  // no model there: scaledObjectProblems checks what the chart relies on instead.
  for (const o of objs) {
    if (o.apiVersion === "keda.sh/v1alpha1" && o.kind === "ScaledObject") {
      scaledObjectProblems(o, objs.filter(podSpecOf)).forEach((p) => bad(`${key(o)}: ${p}`));
      continue;
    }
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
      if (isTool(c)) {
        if ((c.ports ?? []).length || c.startupProbe || c.livenessProbe || c.readinessProbe) bad(`${ck}: a tool pod serves nothing (no ports or probes)`);
        continue;
      }
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
    // Its pods carry controller-revision-hash=<name>-<10-character hash>, a label value of at most 63.
    if (w.metadata.name.length > 52) bad(`${key(w)}: a StatefulSet name over 52 characters (its pods' controller-revision-hash label would pass 63)`);
    const s = services.find((x) => x.metadata.name === w.spec.serviceName);
    if (!s) bad(`${key(w)}: serviceName ${w.spec.serviceName} has no Service`);
    else if (s.spec.clusterIP !== "None") bad(`${key(w)}: governing Service ${s.metadata.name} is not headless`);
    else if (!matchesLabels(s.spec.selector, podLabelsOf(w))) bad(`${key(w)}: governing Service does not select its pods`);
  }
  // Each component's pods sit behind exactly one Service (so they are scraped once).
  for (const w of workloads) {
    const n = services.filter((s) => matchesLabels(s.spec.selector, podLabelsOf(w))).length;
    const want = podSpecOf(w).containers.every(isTool) ? 0 : 1;
    if (n !== want) bad(`${key(w)}: pods are selected by ${n} Services, want ${want}`);
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

  // mTLS: every service either has all three MOE_TLS_* files, each mounted read-only from one
  // Secret volume (the same for all three), or runs with MOE_INSECURE=true; never both or neither.
  // With TLS (or the router's public TLS) the kubelet's plaintext gRPC probes cannot use the gRPC
  // port: they must use the port of MOE_HEALTH_LISTEN. Router-only files come from Secrets too.
  const certificates = objs.filter((o) => o.kind === "Certificate");
  for (const w of workloads) {
    const spec = podSpecOf(w);
    for (const c of spec.containers) {
      const ck = `${key(w)} container ${c.name}`;
      const env = isTool(c) ? toolTlsFlags(c) : effectiveEnv(c, configMaps);
      const tls = ["MOE_TLS_CA", "MOE_TLS_CERT", "MOE_TLS_KEY"].filter((k) => env[k]);
      const insecure = env.MOE_INSECURE === "true";
      if (tls.length !== 0 && tls.length !== 3) bad(`${ck}: only ${tls.join(", ")} of the three MOE_TLS_* files`);
      if (tls.length === 3 && insecure) bad(`${ck}: both MOE_TLS_* and MOE_INSECURE=true`);
      if (tls.length === 0 && !insecure) bad(`${ck}: neither MOE_TLS_* nor MOE_INSECURE=true (the service would not start)`);
      const tlsVolumes = new Set();
      for (const k of [...tls, "MOE_API_KEYS_FILE", "MOE_PUBLIC_TLS_CERT", "MOE_PUBLIC_TLS_KEY"]) {
        if (!env[k]) continue;
        const src = secretFileSource(spec, c, env[k]);
        if (!src) { bad(`${ck}: ${k}=${env[k]} is not a file of a mounted Secret`); continue; }
        if (!src.mount.readOnly) bad(`${ck}: the Secret mount of ${k} is not read-only`);
        if (tls.includes(k)) tlsVolumes.add(src.volume.name);
      }
      if (tlsVolumes.size > 1) bad(`${ck}: MOE_TLS_* files come from ${tlsVolumes.size} different Secrets`);
      if ((env.MOE_PUBLIC_TLS_CERT === undefined) !== (env.MOE_PUBLIC_TLS_KEY === undefined)) {
        bad(`${ck}: MOE_PUBLIC_TLS_CERT and MOE_PUBLIC_TLS_KEY come together`);
      }
      const grpcPort = portNumber(c.ports, "grpc");
      const healthListen = env.MOE_HEALTH_LISTEN;
      const healthPort = healthListen ? Number(healthListen.split(":").pop()) : undefined;
      if (healthListen && !(c.ports ?? []).some((p) => p.containerPort === healthPort)) {
        bad(`${ck}: MOE_HEALTH_LISTEN port ${healthPort} is not a container port`);
      }
      const grpcWantsTls = tls.length > 0 || env.MOE_PUBLIC_TLS_CERT !== undefined;
      for (const probe of PROBES) {
        const port = portNumber(c.ports, probePort(c[probe]));
        if (port === undefined) continue;  // reported above
        if (grpcWantsTls && port === grpcPort) bad(`${ck}: ${probe} on the TLS gRPC port (the kubelet's probe speaks plaintext)`);
        if (port !== grpcPort && port !== healthPort) bad(`${ck}: ${probe} port ${port} serves no health checks`);
      }
      // A Certificate's Secret is mounted only by the pods of the role it names.
      const role = ROLE_OF_BINARY[c.command?.[0]];
      for (const vname of tlsVolumes) {
        const secretName = spec.volumes.find((v) => v.name === vname).secret.secretName;
        for (const cert of certificates.filter((x) => x.spec.secretName === secretName)) {
          if (cert.spec.commonName !== role) bad(`${ck}: mounts ${secretName} of ${key(cert)} whose common name ${cert.spec.commonName} is not ${role}`);
        }
      }
    }
  }
  for (const cert of certificates) {
    const s = cert.spec;
    if (!Object.values(ROLE_OF_BINARY).includes(s.commonName)) bad(`${key(cert)}: common name ${s.commonName} is no role`);
    if (!(s.dnsNames ?? []).includes(CLUSTER_SERVER_NAME)) bad(`${key(cert)}: no DNS name ${CLUSTER_SERVER_NAME}`);
    for (const u of ["server auth", "client auth"]) if (!(s.usages ?? []).includes(u)) bad(`${key(cert)}: no usage ${u}`);
    const mounted = workloads.some((w) => (podSpecOf(w).volumes ?? []).some((v) => v.secret?.secretName === s.secretName));
    if (!mounted) bad(`${key(cert)}: no pod mounts its Secret ${s.secretName}`);
  }

  // NetworkPolicies select pods of this chart, their peers select pods too, and the named ports
  // they open exist on the selected pods.
  for (const np of objs.filter((o) => o.kind === "NetworkPolicy")) {
    const targets = workloads.filter((w) => matchesSelector(np.spec.podSelector, podLabelsOf(w)));
    if (targets.length === 0) bad(`${key(np)}: podSelector matches no pod template`);
    for (const rule of np.spec.ingress ?? []) {
      for (const peer of rule.from ?? []) {
        if (peer.podSelector && !peer.namespaceSelector && !workloads.some((w) => matchesSelector(peer.podSelector, podLabelsOf(w)))) {
          bad(`${key(np)}: a peer podSelector matches no pod template`);
        }
      }
      for (const p of rule.ports ?? []) {
        for (const w of targets) {
          if (!podSpecOf(w).containers.some((c) => portExists(c.ports, p.port))) bad(`${key(np)}: port ${p.port} not on pods of ${key(w)}`);
        }
      }
    }
  }
  return problems;
}

// What a NetworkPolicy lets in, as "<peer>:<port>" strings: peer is a component name (a pod
// selector of this release), "*" (anyone) or "other" (namespace or IP peers); port is a port name or
// "*" (every port).
function admitted(np) {
  const out = new Set();
  for (const rule of np.spec.ingress ?? []) {
    const peers = rule.from?.length
      ? rule.from.map((p) => (p.podSelector && !p.namespaceSelector && !p.ipBlock)
        ? (p.podSelector.matchLabels?.["app.kubernetes.io/component"] ?? "?") : "other")
      : ["*"];
    const ports = rule.ports?.length ? rule.ports.map((p) => String(p.port)) : ["*"];
    for (const peer of peers) for (const port of ports) out.add(`${peer}:${port}`);
  }
  return [...out].sort();
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
  ["mTLS Secret mount", (o) => { const c = o.find((x) => x.kind === "StatefulSet").spec.template.spec.containers[0]; c.volumeMounts = c.volumeMounts.filter((m) => m.name !== "tls"); }],
  ["mTLS Secret keys", (o) => { const v = o.find((x) => x.kind === "Deployment").spec.template.spec.volumes.find((x) => x.name === "tls"); v.secret.items.pop(); }],
  ["TLS probe port", (o) => { o.find((x) => x.kind === "Deployment").spec.template.spec.containers[0].livenessProbe.grpc.port = 50051; }],
  ["TLS and --insecure", (o) => { o.find((x) => x.kind === "StatefulSet").spec.template.spec.containers[0].env.push({ name: "MOE_INSECURE", value: "true" }); }],
  ["neither TLS nor --insecure", (o) => { const cm = o.find((x) => x.kind === "ConfigMap"); delete cm.data.MOE_TLS_CA; delete cm.data.MOE_TLS_CERT; delete cm.data.MOE_TLS_KEY; }],
  ["NetworkPolicy selector", (o) => { o.find((x) => x.kind === "NetworkPolicy").spec.podSelector.matchLabels["app.kubernetes.io/component"] = "nope"; }],
  ["NetworkPolicy peer", (o) => { const np = o.filter((x) => x.kind === "NetworkPolicy")[1]; np.spec.ingress[0].from[0].podSelector.matchLabels["app.kubernetes.io/instance"] = "other"; }],
  ["NetworkPolicy port", (o) => { o.find((x) => x.kind === "NetworkPolicy").spec.ingress[0].ports[0].port = "grpcc"; }],
];
// Mutations of the elastic render (KEDA ScaledObjects).
const ELASTIC_MUTATIONS = [
  ["ScaledObject target", (o) => { o.find((x) => x.kind === "ScaledObject").spec.scaleTargetRef.name = "nope"; }],
  ["ScaledObject replica counts", (o) => { o.find((x) => x.kind === "ScaledObject").spec.minReplicaCount = 99; }],
  ["ScaledObject query", (o) => { delete o.find((x) => x.kind === "ScaledObject").spec.triggers[0].metadata.query; }],
  ["StatefulSet name length", (o) => { const w = o.find((x) => x.kind === "StatefulSet"); w.metadata.name = "x".repeat(53); }],
];
// Mutations of the cert-manager render.
const CERT_MUTATIONS = [
  ["Certificate common name", (o) => { const c = o.filter((x) => x.kind === "Certificate"); [c[0].spec.commonName, c[1].spec.commonName] = [c[1].spec.commonName, c[0].spec.commonName]; }],
  ["Certificate usages", (o) => { o.find((x) => x.kind === "Certificate").spec.usages = ["server auth"]; }],
  ["Certificate DNS name", (o) => { o.find((x) => x.kind === "Certificate").spec.dnsNames = ["moe.example"]; }],
  ["Certificate Secret", (o) => { o.find((x) => x.kind === "Certificate").spec.secretName = "nobody-mounts-this"; }],
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


// ---- Security settings: each rendered and checked for what it must give ------------------------
const RELEASE = "moe-moe-serving";
const workloadOf = (objs, comp) => objs.find((o) => podSpecOf(o) && o.metadata.labels["app.kubernetes.io/component"] === comp);
const serviceContainer = (objs, comp) => podSpecOf(workloadOf(objs, comp)).containers[0];
const envOf = (objs, comp) => effectiveEnv(serviceContainer(objs, comp), objs.filter((o) => o.kind === "ConfigMap"));
const probePorts = (objs, comp) => { const c = serviceContainer(objs, comp); return PROBES.map((p) => portNumber(c.ports, probePort(c[p]))); };
const secretVolume = (objs, comp, name) => (podSpecOf(workloadOf(objs, comp)).volumes ?? []).find((v) => v.name === name)?.secret;
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

function renderScenario(name, sets) {
  let objs;
  try { objs = render(null, sets); } catch (e) { checks.ok(false, `${name}: helm template failed: ${e.stderr ?? e.message}`); return null; }
  const problems = policyProblems(objs, { gpu: false });
  problems.forEach((p) => checks.ok(false, `${name}: ${p}`));
  checks.ok(problems.length === 0, `${name}: ${objs.length} objects pass schema and policy checks`);
  return objs;
}

// Default: mTLS from per-role Secrets, probes on the plaintext health port, three NetworkPolicies.
if (rendered.default) {
  const objs = rendered.default;
  for (const comp of COMPONENTS) {
    const env = envOf(objs, comp);
    checks.ok(env.MOE_TLS_CA === "/etc/moe/tls/ca.crt" && env.MOE_TLS_CERT === "/etc/moe/tls/tls.crt" && env.MOE_TLS_KEY === "/etc/moe/tls/tls.key",
      `default: ${comp} has MOE_TLS_CA/CERT/KEY`);
    checks.ok(!("MOE_INSECURE" in env), `default: ${comp} has no MOE_INSECURE`);
    checks.ok(env.MOE_HEALTH_LISTEN === "0.0.0.0:8081", `default: ${comp} serves health checks on 0.0.0.0:8081`);
    checks.ok(same(probePorts(objs, comp), [8081, 8081, 8081]), `default: ${comp} probes use the health port`);
    const v = secretVolume(objs, comp, "tls");
    checks.ok(v?.secretName === `${RELEASE}-${comp}-tls` && same(v.items.map((i) => i.key), ["ca.crt", "tls.crt", "tls.key"]),
      `default: ${comp} mounts Secret ${RELEASE}-${comp}-tls (ca.crt, tls.crt, tls.key)`);
  }
  checks.ok(!("MOE_API_KEYS_FILE" in envOf(objs, "router")) && !("MOE_PUBLIC_TLS_CERT" in envOf(objs, "router")),
    "default: the router has no API keys and no public TLS");
  checks.ok(!objs.some((o) => o.kind === "Certificate"), "default: no cert-manager Certificates without an issuer");
  const nps = objs.filter((o) => o.kind === "NetworkPolicy");
  checks.ok(nps.length === 3, `default: 3 NetworkPolicies (got ${nps.length})`);
  const want = {
    router: ["*:grpc", "*:health", "*:http", "*:metrics"],
    attention: ["*:health", "*:metrics", "expert:*", "router:grpc"],
    expert: ["*:health", "*:metrics", "attention:*", "router:grpc"],
  };
  for (const comp of COMPONENTS) {
    const np = nps.find((x) => x.spec.podSelector.matchLabels?.["app.kubernetes.io/component"] === comp);
    checks.ok(np && matchesSelector(np.spec.podSelector, podLabelsOf(workloadOf(objs, comp))), `default: a NetworkPolicy selects the ${comp} pods`);
    if (!np) continue;
    checks.ok(same(np.spec.policyTypes, ["Ingress"]), `default: ${comp} NetworkPolicy restricts ingress only`);
    checks.ok(same(admitted(np), want[comp]), `default: ${comp} NetworkPolicy admits ${want[comp].join(" ")} (got ${admitted(np).join(" ")})`);
  }
}

// tls.enabled=false: --insecure, probes on the gRPC port, no Secrets.
const insecure = renderScenario("tls off", ["tls.enabled=false"]);
if (insecure) {
  for (const comp of COMPONENTS) {
    const env = envOf(insecure, comp);
    checks.ok(env.MOE_INSECURE === "true" && !("MOE_TLS_CA" in env), `tls off: ${comp} has MOE_INSECURE=true and no MOE_TLS_*`);
    checks.ok(same(probePorts(insecure, comp), [50051, 50051, 50051]) && !("MOE_HEALTH_LISTEN" in env), `tls off: ${comp} probes use the gRPC port`);
    checks.ok(!secretVolume(insecure, comp, "tls"), `tls off: ${comp} mounts no mTLS Secret`);
  }
  const att = insecure.find((o) => o.kind === "NetworkPolicy" && o.spec.podSelector.matchLabels["app.kubernetes.io/component"] === "attention");
  checks.ok(att && same(admitted(att), ["*:metrics", "expert:*", "router:grpc"]), "tls off: the NetworkPolicies open no health port");
}

// cert-manager: one Certificate per role, into the Secret that role's pods mount.
const withIssuer = renderScenario("cert-manager", ["tls.certManager.issuerRef.name=moe-ca", "tls.certManager.issuerRef.kind=ClusterIssuer",
  "tls.secrets.expertWorker=my-expert-tls"]);
if (withIssuer) {
  const certs = withIssuer.filter((o) => o.kind === "Certificate");
  checks.ok(certs.length === 3, `cert-manager: 3 Certificates (got ${certs.length})`);
  const cn = { router: "moe-router", attention: "moe-attention-worker", expert: "moe-expert-worker" };
  for (const comp of COMPONENTS) {
    const cert = certs.find((c) => c.metadata.labels["app.kubernetes.io/component"] === comp);
    const secret = secretVolume(withIssuer, comp, "tls")?.secretName;
    checks.ok(cert?.spec.commonName === cn[comp] && cert.spec.secretName === secret, `cert-manager: ${comp} Certificate has CN ${cn[comp]} and writes the Secret its pods mount (${secret})`);
    checks.ok(same(cert?.spec.issuerRef, { name: "moe-ca", kind: "ClusterIssuer", group: "cert-manager.io" }), `cert-manager: ${comp} Certificate uses the issuer given`);
  }
  checks.ok(secretVolume(withIssuer, "expert", "tls")?.secretName === "my-expert-tls", "cert-manager: tls.secrets.expertWorker names the expert Secret");
}

// The router's public edge: API keys and public TLS from Secrets (here with mTLS off, so that the
// health port comes from the public TLS alone).
const edge = renderScenario("public edge", ["tls.enabled=false", "router.apiKeys.existingSecret=moe-keys", "router.publicTls.existingSecret=moe-public-tls"]);
if (edge) {
  const env = envOf(edge, "router");
  const c = serviceContainer(edge, "router");
  const spec = podSpecOf(workloadOf(edge, "router"));
  const keys = env.MOE_API_KEYS_FILE && secretFileSource(spec, c, env.MOE_API_KEYS_FILE);
  checks.ok(keys?.volume.secret.secretName === "moe-keys" && keys.key === "api-keys", "public edge: MOE_API_KEYS_FILE is key api-keys of Secret moe-keys");
  const cert = env.MOE_PUBLIC_TLS_CERT && secretFileSource(spec, c, env.MOE_PUBLIC_TLS_CERT);
  const key = env.MOE_PUBLIC_TLS_KEY && secretFileSource(spec, c, env.MOE_PUBLIC_TLS_KEY);
  checks.ok(cert?.volume.secret.secretName === "moe-public-tls" && cert.key === "tls.crt" && key?.key === "tls.key",
    "public edge: MOE_PUBLIC_TLS_CERT/KEY are tls.crt/tls.key of Secret moe-public-tls");
  checks.ok(same(probePorts(edge, "router"), [8081, 8081, 8081]), "public edge: the router's probes avoid its TLS port");
  for (const comp of ["attention", "expert"]) {
    const we = envOf(edge, comp);
    checks.ok(!("MOE_API_KEYS_FILE" in we) && !("MOE_PUBLIC_TLS_CERT" in we) && !secretVolume(edge, comp, "api-keys"), `public edge: ${comp} workers get no public-edge settings`);
  }
}

// deploy/k8s/make_tls_secrets.sh: its Secrets pass the schema and hold every key the default
// render mounts from them.
if (rendered.default) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moe-tls-"));
  try {
    run(path.join(repoRoot, "deploy/k8s/make_tls_secrets.sh"), [dir], { stdio: ["ignore", "pipe", "pipe"] });
    const secrets = YAML.parseAllDocuments(fs.readFileSync(path.join(dir, "secrets.yaml"), "utf8")).map((d) => d.toJS()).filter(Boolean);
    for (const sec of secrets) {
      try { new models.v1.Secret(sec).validate(); checks.ok(true, `make_tls_secrets: Secret ${sec.metadata.name} passes the schema`); } catch (e) { checks.ok(false, `make_tls_secrets: Secret ${sec.metadata?.name}: ${e.message}`); }
    }
    for (const comp of COMPONENTS) {
      const v = secretVolume(rendered.default, comp, "tls");
      const sec = secrets.find((x) => x.metadata.name === v?.secretName);
      checks.ok(sec && v.items.every((i) => sec.data?.[i.key]), `make_tls_secrets: Secret ${v?.secretName} holds what the ${comp} pods mount`);
    }
  } catch (e) {
    checks.ok(false, `make_tls_secrets.sh failed: ${e.stderr ?? e.message}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// The live balancer: one moectl pod running `cluster rebalance --watch` against every worker pod,
// with the operator certificate (cert-manager renders it), admitted by the workers' NetworkPolicies.
const balancer = renderScenario("balancer", ["balancer.enabled=true", "expert.extraExpertBudgetBytes=1073741824",
  "tls.certManager.issuerRef.name=moe-ca"]);
if (balancer) {
  const w = workloadOf(balancer, "balancer");
  const c = w && podSpecOf(w).containers[0];
  checks.ok(w?.kind === "Deployment" && w.spec.replicas === 1 && w.spec.strategy?.type === "Recreate", "balancer: one pod, never two at once");
  const args = c?.args ?? [];
  checks.ok(c?.command?.[0] === "moectl" && same(args.slice(0, 3), ["cluster", "rebalance", "--watch"]), "balancer: runs moectl cluster rebalance --watch");
  const pods = (comp, n) => Array.from({ length: n }, (_, i) => `${RELEASE}-${comp}-${i}.${RELEASE}-${comp}.moe-serving.svc:50051`).join(",");
  checks.ok(args.includes(`--attention-workers=${pods("attention", 2)}`) && args.includes(`--expert-workers=${pods("expert", 4)}`),
    "balancer: dials every attention and expert worker pod by its headless Service name, in rank order");
  const secret = secretVolume(balancer, "balancer", "tls")?.secretName;
  const cert = balancer.find((o) => o.kind === "Certificate" && o.spec.secretName === secret);
  checks.ok(secret === `${RELEASE}-operator-tls` && cert?.spec.commonName === "moe-operator", "balancer: mounts the moe-operator certificate cert-manager makes");
  for (const comp of ["attention", "expert"]) {
    const np = balancer.find((o) => o.kind === "NetworkPolicy" && o.spec.podSelector.matchLabels["app.kubernetes.io/component"] === comp);
    checks.ok(np && admitted(np).includes("balancer:grpc"), `balancer: the ${comp} NetworkPolicy admits it on gRPC`);
  }
}
// Elastic on cost with the live balancer: attention workers and joinable expert workers both scaled
// by KEDA; the balancer lists every worker there may be.
const elastic = renderScenario("elastic", ["balancer.enabled=true", "expert.extraExpertBudgetBytes=1073741824",
  "attention.autoscaling.enabled=true", "attention.autoscaling.maxReplicas=3", "expert.autoscaling.enabled=true",
  "expert.autoscaling.maxReplicas=2"]);
if (elastic) {
  const joinable = workloadOf(elastic, "joinable");
  const jc = joinable && podSpecOf(joinable).containers[0];
  checks.ok(joinable?.kind === "StatefulSet" && joinable.spec.ordinals?.start === 4 && joinable.spec.replicas === undefined,
    "elastic: joinable expert workers: a StatefulSet whose ordinals start after the 4 home ones, replicas left to KEDA");
  checks.ok(jc?.command?.[0] === "moe-expert-worker" && jc.args.includes("--joinable") && jc.args.includes("--rank_from_hostname"),
    "elastic: they run moe-expert-worker --joinable, rank from the host name");
  checks.ok(secretVolume(elastic, "joinable", "tls")?.secretName === `${RELEASE}-expert-tls`,
    "elastic: they mount the expert workers' certificate");
  const targets = elastic.filter((o) => o.kind === "ScaledObject").map((o) => o.spec.scaleTargetRef.name).sort();
  checks.ok(same(targets, [`${RELEASE}-attention`, `${RELEASE}-joinable`]), `elastic: ScaledObjects on the attention and joinable StatefulSets (got ${targets.join(", ")})`);
  const pods = (comp, from, n) => Array.from({ length: n }, (_, i) => `${RELEASE}-${comp}-${from + i}.${RELEASE}-${comp}.moe-serving.svc:50051`).join(",");
  const env = envOf(elastic, "attention");
  const ac = serviceContainer(elastic, "attention");
  checks.ok(env.MOE_JOINABLE_EXPERT_WORKERS === pods("joinable", 4, 2) && ac.args.includes("--joinable_expert_workers=$(MOE_JOINABLE_EXPERT_WORKERS)"),
    "elastic: the attention workers are told every joinable expert worker, ranks 4 and 5");
  const bargs = podSpecOf(workloadOf(elastic, "balancer")).containers[0].args;
  checks.ok(bargs.includes(`--attention-workers=${pods("attention", 0, 3)}`) &&
    bargs.includes(`--expert-workers=${pods("expert", 0, 4)},${pods("joinable", 4, 2)}`),
    "elastic: the balancer lists maxReplicas attention workers and the home then joinable expert workers");
  const np = (comp) => elastic.find((o) => o.kind === "NetworkPolicy" && o.spec.podSelector.matchLabels["app.kubernetes.io/component"] === comp);
  checks.ok(np("attention") && admitted(np("attention")).includes("joinable:*"), "elastic: the attention workers admit the joinable expert workers on every port");
  checks.ok(np("joinable") && same(admitted(np("joinable")), ["*:health", "*:metrics", "attention:*", "balancer:grpc", "router:grpc"]),
    `elastic: the joinable expert workers admit what the expert workers do (got ${np("joinable") ? admitted(np("joinable")).join(" ") : "none"})`);
}
// The longest names: fullnameOverride of 40 characters (the schema's most) leaves room for every suffix.
renderScenario("elastic, long names", ["balancer.enabled=true", "expert.extraExpertBudgetBytes=1073741824",
  "expert.autoscaling.enabled=true", `fullnameOverride=${"a".repeat(40)}`]);
const elasticMonitored = renderScenario("elastic monitored", ["balancer.enabled=true", "expert.extraExpertBudgetBytes=1073741824",
  "expert.autoscaling.enabled=true", "serviceMonitor.enabled=true"]);
if (elasticMonitored) {
  const sm = elasticMonitored.find((o) => o.kind === "ServiceMonitor");
  const svc = elasticMonitored.find((o) => o.kind === "Service" && o.metadata.labels["app.kubernetes.io/component"] === "joinable");
  checks.ok(sm && svc && matchesSelector(sm.spec.selector, svc.metadata.labels), "elastic: the ServiceMonitor scrapes the joinable expert workers");
}
const balancerOff = rendered.default && !rendered.default.some((o) => o.metadata?.labels?.["app.kubernetes.io/component"] === "balancer");
checks.ok(balancerOff, "balancer: off by default");

// Metrics narrowed to a Prometheus namespace; NetworkPolicies off.
const metricsNs = renderScenario("metricsFrom", ["networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring"]);
if (metricsNs) {
  const nps = metricsNs.filter((o) => o.kind === "NetworkPolicy");
  checks.ok(nps.length === 3 && nps.every((np) => admitted(np).includes("other:metrics") && !admitted(np).includes("*:metrics")),
    "metricsFrom: the metrics port admits only the given peers");
}
const noPolicies = renderScenario("no NetworkPolicies", ["networkPolicy.enabled=false"]);
if (noPolicies) checks.ok(!noPolicies.some((o) => o.kind === "NetworkPolicy"), "networkPolicy.enabled=false renders no NetworkPolicy");

if (process.argv.includes("--self-test") && rendered.gpu) {
  for (const [what, mutate] of MUTATIONS) {
    const objs = structuredClone(rendered.gpu);
    mutate(objs);
    checks.ok(policyProblems(objs, { gpu: true }).length > 0, `self-test: breaking the ${what} is detected`);
  }
}
if (process.argv.includes("--self-test") && withIssuer) {
  for (const [what, mutate] of CERT_MUTATIONS) {
    const objs = structuredClone(withIssuer);
    mutate(objs);
    checks.ok(policyProblems(objs, { gpu: false }).length > 0, `self-test: breaking the ${what} is detected`);
  }
}
if (process.argv.includes("--self-test") && elastic) {
  for (const [what, mutate] of ELASTIC_MUTATIONS) {
    const objs = structuredClone(elastic);
    mutate(objs);
    checks.ok(policyProblems(objs, { gpu: false }).length > 0, `self-test: breaking the ${what} is detected`);
  }
}
checks.finish();
