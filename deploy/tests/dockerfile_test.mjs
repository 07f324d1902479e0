// Lints deploy/docker/Dockerfile with dockerfile-utils (the Docker language server's validator,
// every diagnostic is a failure) and checks its structure with dockerfile-ast: multi-stage on
// Debian 12, CMake/Ninja build in the builder, runtime stage without -dev packages or compilers,
// a non-root USER, and the four binaries copied from the builder. (No Docker daemon here: the
// image itself is not built by the tests.)
import fs from "node:fs";
import path from "node:path";
import { Checks, importTool, repoRoot } from "./lib.mjs";

const checks = new Checks("deploy_dockerfile");
const ast = await importTool("dockerfile-ast/lib/main.js");
const utils = await importTool("dockerfile-utils/lib/main.js");
const { DockerfileParser } = ast.default ?? ast;
const { validate } = utils.default ?? utils;

const BINARIES = ["moe-router", "moe-attention-worker", "moe-expert-worker", "moectl"];

// Returns problems found in a Dockerfile's text; empty when it is fine.
export function dockerfileProblems(text) {
  const problems = [];
  const bad = (w) => problems.push(w);
  for (const d of validate(text)) bad(`lint line ${d.range.start.line + 1}: ${d.message}`);

  const df = DockerfileParser.parse(text);
  const args = Object.fromEntries(df.getInitialARGs().map((a) => [a.getProperty()?.getName(), a.getProperty()?.getValue()]));
  const expand = (s) => (s ?? "").replace(/\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?/g, (_, v) => args[v] ?? "");
  const froms = df.getFROMs();
  if (froms.length < 2) bad(`expected a multi-stage build, found ${froms.length} FROM`);
  for (const f of froms) {
    const image = expand(f.getImage());
    if (!/^debian:(12|bookworm)([-.][a-z0-9.-]+)?$/.test(image)) bad(`FROM ${image} is not Debian 12`);
  }
  const stages = df.getInstructions().reduce((acc, ins) => {
    if (ins.getKeyword() === "FROM") acc.push({ name: ins.getBuildStage?.() ?? null, ins: [] });
    else if (acc.length) acc[acc.length - 1].ins.push(ins);
    return acc;
  }, []);
  const builder = stages[0];
  const runtime = stages[stages.length - 1];
  const text0 = (st, kw) => st.ins.filter((i) => i.getKeyword() === kw).map((i) => i.getArgumentsContent() ?? "").join("\n");
  if (builder) {
    const runs = text0(builder, "RUN");
    if (!/cmake\s+-S/.test(runs) || !/-G\s+Ninja/.test(runs) || !/ninja-build/.test(runs)) bad("builder must configure with CMake and Ninja");
    if (!/-dev\b/.test(runs)) bad("builder installs no Debian -dev packages");
  }
  if (runtime) {
    const runs = text0(runtime, "RUN");
    if (/\S+-dev\b|\b(g\+\+|gcc|cmake|ninja-build)\b/.test(runs)) bad("runtime stage installs build tools or -dev packages");
    const users = runtime.ins.filter((i) => i.getKeyword() === "USER").map((i) => (i.getArgumentsContent() ?? "").split(":")[0]);
    const user = users[users.length - 1];
    if (!user || user === "root" || user === "0") bad(`runtime stage must end as a non-root USER, has ${user ?? "none"}`);
    const copies = runtime.ins.filter((i) => i.getKeyword() === "COPY");
    const fromBuilder = copies.filter((c) => c.getFromFlag?.()?.getValue() === builder?.name).map((c) => c.getArgumentsContent()).join(" ");
    for (const b of BINARIES) if (!new RegExp(`/${b}(\\s|$)`).test(fromBuilder)) bad(`runtime stage does not copy ${b} from the builder`);
    if (!runtime.ins.some((i) => i.getKeyword() === "CMD" || i.getKeyword() === "ENTRYPOINT")) bad("runtime stage has no CMD/ENTRYPOINT");
  }
  return problems;
}

const dockerDir = path.join(repoRoot, "deploy/docker");
const text = fs.readFileSync(path.join(dockerDir, "Dockerfile"), "utf8");
const problems = dockerfileProblems(text);
problems.forEach((p) => checks.ok(false, p));
checks.ok(problems.length === 0, "Dockerfile passes lint and structure checks");

const ignore = fs.readFileSync(path.join(dockerDir, "Dockerfile.dockerignore"), "utf8").split("\n");
for (const p of [".git", "build", "build-*"]) checks.ok(ignore.includes(p), `Dockerfile.dockerignore excludes ${p}`);

// Self-test: each broken variant must be caught.
const broken = [
  ["root user", text.replace("USER 10001:10001", "USER root")],
  ["single stage", text.replace(/FROM \$\{DEBIAN_IMAGE\} AS runtime[\s\S]*/, "CMD [\"true\"]\n")],
  ["wrong base", text.replace("ARG DEBIAN_IMAGE=debian:12-slim", "ARG DEBIAN_IMAGE=ubuntu:24.04")],
  ["missing binary", text.replace("/src/build/bin/moectl /usr/local/bin/", "/usr/local/bin/")],
  ["lint error", text.replace("EXPOSE 50051 9090", "EXPOSE 50051:abc")],
];
for (const [what, t] of broken) checks.ok(dockerfileProblems(t).length > 0, `self-test: ${what} is detected`);
checks.finish();
