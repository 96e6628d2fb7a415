// Installing the clients as a new user would: `scripts/pack.sh` packs @herald/client,
// @herald/react and @herald/server; a scratch app outside the workspace installs the three
// tarballs (no workspace links, no path mapping), builds a typed app importing each under
// `tsc --strict` and runs it; every TypeScript code block of docs/clients.md compiles there too.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { heraldBin, repoRoot } from "./helpers/gateway.js";

const here = dirname(fileURLToPath(import.meta.url));
const workspace = resolve(here, "..");
const scratch = mkdtempSync(join(tmpdir(), "herald-install-"));
const app = join(scratch, "app");

/** The version the workspace installed, so the scratch install is served from npm's cache. */
function installed(name: string): string {
  return (JSON.parse(readFileSync(join(workspace, "node_modules", name, "package.json"), "utf8")) as { version: string }).version;
}

/** The ```ts / ```tsx blocks of a Markdown file, with the line each starts on. */
export function codeBlocks(markdown: string): Array<{ lang: "ts" | "tsx"; line: number; code: string }> {
  const blocks: Array<{ lang: "ts" | "tsx"; line: number; code: string }> = [];
  for (const m of markdown.matchAll(/^```(ts|tsx)\n([\s\S]*?)^```$/gm)) {
    blocks.push({ lang: m[1] as "ts" | "tsx", line: markdown.slice(0, m.index).split("\n").length, code: m[2]! });
  }
  return blocks;
}

const MAIN = `// A typed app importing each package from its installed tarball.
import { Herald } from "@herald/client";
import { HeraldProvider, useRealtimeConnected } from "@herald/react";
import { createPublisher } from "@herald/server";
import WebSocket from "ws";
import type { HeraldChannels, HeraldUserChannels } from "./herald-channels.js";

const herald = new Herald<HeraldChannels>("ws://127.0.0.1:9/v1/ws", { token: "t", WebSocket });
const quiet = { warn: () => {}, error: () => {} };
const publisher = createPublisher<HeraldChannels, HeraldUserChannels>({ url: "http://127.0.0.1:9", apiKey: "k", logger: quiet });

function Badge() {
  const live = useRealtimeConnected();
  return <span>{live ? "live" : "offline"}</span>;
}
export const page = (
  <HeraldProvider client={herald} manual>
    <Badge />
  </HeraldProvider>
);
const outcome = await publisher.publishToUser("alice", "notifications.user.{userId}", { type: "mention", text: "hi" });
console.log(JSON.stringify({ client: typeof Herald, react: typeof HeraldProvider, server: outcome.status }));
await publisher.close(0);
`;

describe("the packed clients, installed into an app outside the workspace", () => {
  let blocks: ReturnType<typeof codeBlocks> = [];

  beforeAll(() => {
    const packs = join(scratch, "packs");
    execFileSync("bash", [join(workspace, "scripts/pack.sh"), packs], { cwd: workspace, stdio: "pipe" });
    const tarball = (prefix: string) => join(packs, readdirSync(packs).find((f) => f.startsWith(prefix))!);
    mkdirSync(join(app, "src"), { recursive: true });
    writeFileSync(
      join(app, "package.json"),
      JSON.stringify(
        {
          name: "scratch-app",
          private: true,
          type: "module",
          dependencies: {
            "@herald/client": `file:${tarball("herald-client-")}`,
            "@herald/react": `file:${tarball("herald-react-")}`,
            "@herald/server": `file:${tarball("herald-server-")}`,
            "@tanstack/react-query": installed("@tanstack/react-query"),
            react: installed("react"),
            ws: installed("ws"),
          },
          devDependencies: {
            typescript: installed("typescript"),
            "@types/node": installed("@types/node"),
            "@types/react": installed("@types/react"),
            "@types/ws": installed("@types/ws"),
          },
        },
        null,
        2,
      ),
    );
    writeFileSync(
      join(app, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          strict: true, target: "es2022", module: "nodenext", moduleResolution: "nodenext", jsx: "react-jsx",
          outDir: "dist", rootDir: "src", types: ["node"], skipLibCheck: false,
        },
        include: ["src"],
      }),
    );
    // Offline first: every package is already in npm's cache from the workspace's `npm ci`.
    execFileSync("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"], { cwd: app, stdio: "pipe" });
    execFileSync(heraldBin, ["codegen", "typescript", "--config", join(repoRoot, "herald.toml"), "--out", join(app, "src/herald-channels.ts")], {
      env: { PATH: process.env["PATH"] ?? "" },
    });
    writeFileSync(join(app, "src/main.tsx"), MAIN);
    blocks = codeBlocks(readFileSync(join(repoRoot, "docs/clients.md"), "utf8"));
    blocks.forEach((b, i) => writeFileSync(join(app, "src", `doc-${i}-line-${b.line}.${b.lang}`), b.code));
  }, 180_000);

  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  it("the tarballs hold built ESM with declarations, and nothing of the workspace", () => {
    for (const pkg of ["client", "react", "server"]) {
      const dir = join(app, "node_modules/@herald", pkg);
      const manifest = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { type: string; exports: { ".": { types: string; import: string } } };
      expect(manifest.type).toBe("module");
      expect(readdirSync(join(dir, "dist"))).toEqual(expect.arrayContaining(["index.js", "index.d.ts"]));
      expect(readdirSync(join(dir, "dist")).filter((f) => f.endsWith(".tsbuildinfo"))).toEqual([]);
      // A copy, not a link back into the workspace.
      expect(resolve(dir)).not.toContain(workspace);
    }
  });

  it("a typed app importing each package and every docs/clients.md snippet build under tsc --strict, and run", () => {
    expect(blocks.length).toBeGreaterThanOrEqual(5);
    const tsc = spawnSync(process.execPath, [join(app, "node_modules/typescript/bin/tsc"), "-p", app, "--pretty", "false"], { encoding: "utf8" });
    // A failure names the snippet's file, `doc-<n>-line-<line in docs/clients.md>`.
    expect(tsc.stdout + tsc.stderr).toBe("");
    expect(tsc.status).toBe(0);
    const run = spawnSync(process.execPath, [join(app, "dist/main.js")], { cwd: app, encoding: "utf8", timeout: 30_000 });
    expect(run.stderr).toBe("");
    expect(JSON.parse(run.stdout.trim().split("\n").pop()!)).toEqual({ client: "function", react: "function", server: "queued" });
    // tsc over three packages' declarations, React's and Node's: slow on a busy 2-core machine.
  }, 180_000);
});
