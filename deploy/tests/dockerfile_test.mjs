// Lints deploy/docker/Dockerfile with dockerfile-utils (the Docker language server's validator,
// every diagnostic is a failure) and checks its structure with dockerfile-ast: multi-stage on
// Debian 12, CMake/Ninja build in the builder, runtime stage without -dev packages or compilers,
// a non-root USER, and the four binaries copied from the builder; the runtime stage is the last
// (the default target). The CUDA target: builder-cuda on an nvidia/cuda 13 devel image building
// with MOE_WITH_CUDA=ON, runtime-cuda on an nvidia/cuda 13 runtime image with the same runtime
// rules. (No Docker daemon here: the images themselves are not built by the tests.)
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
  // ARG values may name earlier ARGs (CUDA_DEVEL_IMAGE uses CUDA_VERSION): expand a few rounds.
  const expandOnce = (s) => (s ?? "").replace(/\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?/g, (_, v) => args[v] ?? "");
  const expand = (s) => expandOnce(expandOnce(expandOnce(s)));
  const froms = df.getFROMs();
  if (froms.length < 2) bad(`expected a multi-stage build, found ${froms.length} FROM`);
  const stages = df.getInstructions().reduce((acc, ins) => {
    if (ins.getKeyword() === "FROM") {
      acc.push({ name: ins.getBuildStage?.() ?? null, image: expand(ins.getImage?.()), ins: [] });
    } else if (acc.length) acc[acc.length - 1].ins.push(ins);
    return acc;
  }, []);
  const stage = (name) => stages.find((st) => st.name === name);
  const text0 = (st, kw) => st.ins.filter((i) => i.getKeyword() === kw).map((i) => i.getArgumentsContent() ?? "").join("\n");
  const checkBuilder = (st, label) => {
    if (!st) return bad(`no ${label} stage`);
    const runs = text0(st, "RUN");
    if (!/cmake\s+-S/.test(runs) || !/-G\s+Ninja/.test(runs) || !/ninja-build/.test(runs)) bad(`${label} must configure with CMake and Ninja`);
    if (!/-dev\b/.test(runs)) bad(`${label} installs no -dev packages`);
  };
  const checkRuntime = (st, label, from) => {
    if (!st) return bad(`no ${label} stage`);
    const runs = text0(st, "RUN");
    if (/\S+-dev\b|\b(g\+\+|gcc|cmake|ninja-build)\b/.test(runs)) bad(`${label} stage installs build tools or -dev packages`);
    const users = st.ins.filter((i) => i.getKeyword() === "USER").map((i) => (i.getArgumentsContent() ?? "").split(":")[0]);
    const user = users[users.length - 1];
    if (!user || user === "root" || user === "0") bad(`${label} stage must end as a non-root USER, has ${user ?? "none"}`);
    const copies = st.ins.filter((i) => i.getKeyword() === "COPY");
    const fromBuilder = copies.filter((c) => c.getFromFlag?.()?.getValue() === from?.name).map((c) => c.getArgumentsContent()).join(" ");
    for (const b of BINARIES) if (!new RegExp(`/${b}(\\s|$)`).test(fromBuilder)) bad(`${label} stage does not copy ${b} from ${from?.name}`);
    if (!st.ins.some((i) => i.getKeyword() === "CMD" || i.getKeyword() === "ENTRYPOINT")) bad(`${label} stage has no CMD/ENTRYPOINT`);
  };
  // The CPU image: Debian 12 throughout, and the last stage (what a plain `docker build` makes).
  const builder = stage("builder");
  const runtime = stage("runtime");
  for (const st of [builder, runtime]) {
    if (st && !/^debian:(12|bookworm)([-.][a-z0-9.-]+)?$/.test(st.image)) bad(`FROM ${st.image} (${st.name}) is not Debian 12`);
  }
  checkBuilder(builder, "builder");
  checkRuntime(runtime, "runtime", builder);
  if (stages.length && stages[stages.length - 1].name !== "runtime") bad("the last stage (the default target) is not runtime");
  // The CUDA image.
  const builderCuda = stage("builder-cuda");
  const runtimeCuda = stage("runtime-cuda");
  if (builderCuda && !/^nvidia\/cuda:13\.[0-9.]+-devel-/.test(builderCuda.image)) bad(`FROM ${builderCuda.image} (builder-cuda) is not an nvidia/cuda 13 devel image`);
  if (runtimeCuda && !/^nvidia\/cuda:13\.[0-9.]+-runtime-/.test(runtimeCuda.image)) bad(`FROM ${runtimeCuda.image} (runtime-cuda) is not an nvidia/cuda 13 runtime image`);
  checkBuilder(builderCuda, "builder-cuda");
  if (builderCuda && !/-DMOE_WITH_CUDA=ON\b/.test(text0(builderCuda, "RUN"))) bad("builder-cuda does not build with -DMOE_WITH_CUDA=ON");
  checkRuntime(runtimeCuda, "runtime-cuda", builderCuda);
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
  ["CUDA build without CUDA", text.replace("-DMOE_WITH_CUDA=ON", "-DMOE_WITH_CUDA=OFF")],
  ["CUDA runtime on a devel image", text.replace("AS runtime-cuda", "AS runtime-cuda-old\nFROM ${CUDA_DEVEL_IMAGE} AS runtime-cuda")],
  ["CUDA runtime as root", text.replace(/(AS runtime-cuda[\s\S]*?)USER 10001:10001/, "$1USER root")],
  ["no CUDA target", text.replace(/# ---- builder-cuda[\s\S]*?(# ---- runtime:)/, "$1")],
  ["CUDA image as the default target", `${text}\nFROM \${CUDA_RUNTIME_IMAGE} AS runtime-cuda-last\nCMD ["true"]\n`],
];
for (const [what, t] of broken) checks.ok(dockerfileProblems(t).length > 0, `self-test: ${what} is detected`);
checks.finish();
