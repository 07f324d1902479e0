// Checks the metric catalogue's own rules and that every metric name used in PromQL (alert and
// recording rules, Grafana dashboard) is one the services export (deploy/metrics/catalog.txt),
// a series a recording rule defines, or a series Prometheus itself makes (`up`).
import fs from "node:fs";
import path from "node:path";
import { Checks, importTool, repoRoot } from "./lib.mjs";

const checks = new Checks("deploy_promql_names");
const YAML = (await importTool("yaml/dist/index.js")).default;

// ---- catalogue -------------------------------------------------------------------------------
export function parseCatalog(text) {
  const metrics = new Map();
  const errors = [];
  text.split("\n").forEach((line, i) => {
    if (!line.trim() || line.startsWith("#")) return;
    const f = line.split(" | ").map((s) => s.trim());
    if (f.length !== 6) { errors.push(`line ${i + 1}: expected 6 fields, got ${f.length}`); return; }
    const [name, type, labels, buckets, when, help] = f;
    if (metrics.has(name)) errors.push(`line ${i + 1}: duplicate ${name}`);
    metrics.set(name, {
      name, type, when, help, line: i + 1,
      labels: labels === "-" ? [] : labels.split(","),
      buckets: buckets === "-" ? [] : buckets.split(",").map(Number),
    });
  });
  return { metrics, errors };
}

const BASE_UNITS = ["seconds", "bytes", "ratio", "dollars", "tokens", "sequences", "blocks", "experts", "info",
  "ready", "running", "waiting", "expected", "total"];
const RESERVED_LABELS = new Set(["le", "quantile", "job", "instance", "pod", "namespace", "node"]);

function lintCatalog(metrics) {
  for (const m of metrics.values()) {
    const where = `catalog line ${m.line} (${m.name})`;
    checks.ok(/^moe_[a-z0-9_]+[a-z0-9]$/.test(m.name), `${where}: name must be moe_snake_case`);
    checks.ok(["counter", "gauge", "histogram"].includes(m.type), `${where}: unknown type ${m.type}`);
    checks.ok((m.type === "counter") === m.name.endsWith("_total"), `${where}: exactly the counters end in _total`);
    checks.ok(!/_(milliseconds|ms|kb|mb|percent|usd|cents)(_|$)/.test(m.name), `${where}: not a base unit`);
    checks.ok(BASE_UNITS.some((u) => m.name.endsWith(`_${u}`) || m.name.endsWith(`_${u}_total`)),
      `${where}: name should end in a unit or count noun`);
    checks.ok(m.help.length >= 10, `${where}: help text missing`);
    checks.ok(m.when === "always" || /^--[a-z_]+$/.test(m.when), `${where}: when must be always or a --flag`);
    for (const l of m.labels) {
      checks.ok(/^[a-z][a-z0-9_]*$/.test(l) && !RESERVED_LABELS.has(l), `${where}: bad or reserved label ${l}`);
    }
    if (m.type === "histogram") {
      const b = m.buckets;
      checks.ok(b.length >= 5 && b.every((x, i) => Number.isFinite(x) && (i === 0 || x > b[i - 1])),
        `${where}: histogram buckets must be >= 5 increasing numbers`);
      if (m.name.endsWith("_seconds")) {
        checks.ok(b[b.length - 1] >= 60, `${where}: latency buckets must reach minutes (>= 60 s)`);
      }
    } else {
      checks.ok(m.buckets.length === 0, `${where}: only histograms have buckets`);
    }
  }
}

// ---- PromQL name extraction --------------------------------------------------------------------
const KEYWORDS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
  "unless", "offset", "inf", "nan", "sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile",
  "stddev", "stdvar", "count_values", "group", "atan2"]);

// Returns the metric names (series selectors) used in a PromQL expression.
export function promqlMetricNames(expr) {
  let e = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""') // string literals
    .replace(/#[^\n]*/g, "") // comments
    .replace(/\{[^}]*\}/g, " ") // label matchers
    .replace(/\[[^\]]*\]/g, " ") // range and subquery windows
    // grouping / matching label lists: by (...), without (...), on (...), ignoring (...), group_x (...)
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ");
  const names = new Set();
  const re = /(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(\s*\()?/g;
  for (const m of e.matchAll(re)) {
    const [, name, call] = m;
    if (call) continue; // function or aggregation call
    if (KEYWORDS.has(name.toLowerCase())) continue;
    names.add(name);
  }
  return names;
}

function selfTest() {
  const cases = [
    ['histogram_quantile(0.99, sum by (le) (rate(moe_a_seconds_bucket{x="y,z"}[5m])))', ["moe_a_seconds_bucket"]],
    ["sum(rate(a_total[1m])) / ignoring (phase) group_left sum(b)", ["a_total", "b"]],
    ["up == 0 and on (job, instance) max_over_time(moe_build_info[6h])", ["up", "moe_build_info"]],
    ["x / clamp_min(y, 1e-9) > bool 0.5 offset 5m", ["x", "y"]],
    ["moe:recorded:rate5m / 3600 unless sum without (a) (c)", ["moe:recorded:rate5m", "c"]],
    ['rate(m[$__rate_interval]) * on(job) group_left(service) n{a=~"p|q"}', ["m", "n"]],
  ];
  for (const [expr, want] of cases) {
    const got = [...promqlMetricNames(expr)].sort();
    checks.ok(JSON.stringify(got) === JSON.stringify([...want].sort()),
      `extractor: ${expr} gave ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}

// ---- the files ---------------------------------------------------------------------------------
function collectExprs() {
  const exprs = [];
  const recorded = new Set();
  const rulesPath = path.join(repoRoot, "deploy/prometheus/rules.yaml");
  const rules = YAML.parse(fs.readFileSync(rulesPath, "utf8"));
  for (const g of rules.groups) {
    for (const r of g.rules) {
      if (r.record) recorded.add(r.record);
      exprs.push({ where: `rules.yaml ${r.record ?? r.alert}`, expr: String(r.expr) });
    }
  }
  const dashPath = path.join(repoRoot, "deploy/grafana/moe-serving.json");
  const dash = JSON.parse(fs.readFileSync(dashPath, "utf8"));
  const walk = (node, title) => {
    if (Array.isArray(node)) { node.forEach((n) => walk(n, title)); return; }
    if (node && typeof node === "object") {
      const t = node.title ?? title;
      if (typeof node.expr === "string") exprs.push({ where: `dashboard "${t}"`, expr: node.expr });
      for (const v of Object.values(node)) walk(v, t);
    }
  };
  walk(dash.panels, "");
  return { exprs, recorded, dashExprCount: exprs.filter((x) => x.where.startsWith("dashboard")).length };
}

const { metrics, errors } = parseCatalog(fs.readFileSync(path.join(repoRoot, "deploy/metrics/catalog.txt"), "utf8"));
errors.forEach((e) => checks.ok(false, `catalog: ${e}`));
checks.ok(metrics.size >= 30, `catalog has ${metrics.size} metrics, expected the full contract`);
lintCatalog(metrics);
selfTest();

const known = new Set(["up"]);
for (const m of metrics.values()) {
  known.add(m.name);
  if (m.type === "histogram") ["_bucket", "_sum", "_count"].forEach((s) => known.add(m.name + s));
}
const { exprs, recorded, dashExprCount } = collectExprs();
checks.ok(dashExprCount >= 20, `dashboard has ${dashExprCount} queries`);
recorded.forEach((r) => checks.ok(/^moe:[a-z0-9_]+:[a-z0-9_]+$/.test(r), `recording rule name ${r} is not level:metric:operations`));
const used = new Set();
for (const { where, expr } of exprs) {
  const names = promqlMetricNames(expr);
  checks.ok(names.size > 0, `${where}: no metric name found in ${expr}`);
  for (const n of names) {
    used.add(n);
    checks.ok(known.has(n) || recorded.has(n), `${where}: metric ${n} is not in deploy/metrics/catalog.txt`);
  }
}
// Every dashboard selector is scoped to the chosen namespace and jobs (template variables), so two
// releases scraped by one Prometheus are never summed together.
const dashboard = JSON.parse(fs.readFileSync(path.join(repoRoot, "deploy/grafana/moe-serving.json"), "utf8"));
const variables = new Set(dashboard.templating.list.map((v) => v.name));
["namespace", "job"].forEach((v) => checks.ok(variables.has(v), `dashboard has no $${v} template variable`));
for (const { where, expr } of exprs.filter((x) => x.where.startsWith("dashboard"))) {
  for (const m of expr.matchAll(/\b(moe_[a-z0-9_]+)(?![a-z0-9_(])(\{[^}]*\})?/g)) {
    const matchers = m[2] ?? "";
    checks.ok(matchers.includes('namespace=~"$namespace"') && matchers.includes('job=~"$job"'),
      `${where}: ${m[1]} is not scoped by namespace=~"$namespace" and job=~"$job" in ${expr}`);
  }
}
// Each always-on metric should be watched somewhere (dashboard or rules).
for (const m of metrics.values()) {
  if (m.when !== "always") continue;
  const forms = [m.name, `${m.name}_bucket`, `${m.name}_sum`, `${m.name}_count`];
  checks.ok(forms.some((f) => used.has(f)), `${m.name} is used by no dashboard panel or rule`);
}
checks.finish();
