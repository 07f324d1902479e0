// Shared helpers of the deploy tests: repository paths, the tools folder, a tiny check reporter.
import { execFileSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

// The repository holding this file (not $MOE_SOURCE_DIR), so that install_tools.sh and the tests
// always agree on the tools folder.
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const toolsDir = process.env.MOE_TOOLS_DIR ?? path.join(repoRoot, "build", "tools");
export const nodeModules = path.join(toolsDir, "npm", "node_modules");
export const helmBin = path.join(toolsDir, "bin", "helm");

// Imports a file of a package in the tools folder, e.g. "yaml/dist/index.js" (the tests'
// node_modules lives outside the source tree, so bare specifiers would not resolve).
export async function importTool(file) {
  return import(pathToFileURL(path.join(nodeModules, file)).href);
}

// Collects failures; `finish` prints "N passed, N failed" and exits 0 or 1.
export class Checks {
  constructor(name) { this.name = name; this.passed = 0; this.failures = []; }
  ok(cond, what) {
    if (cond) { this.passed++; } else { this.failures.push(what); console.error(`FAIL ${this.name}: ${what}`); }
    return cond;
  }
  finish() {
    console.log(`${this.name}: ${this.passed} passed, ${this.failures.length} failed`);
    process.exit(this.failures.length ? 1 : 0);
  }
}

export function run(cmd, args, opts = {}) {
  return execFileSync(cmd, args, { encoding: "utf8", maxBuffer: 64 << 20, ...opts });
}
