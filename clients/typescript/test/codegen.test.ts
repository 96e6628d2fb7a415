// `herald codegen typescript` on a fixture registry, checked by the TypeScript compiler.
import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";

import { heraldBin, repoRoot } from "./helpers/gateway.js";

const here = dirname(fileURLToPath(import.meta.url));
const fixtures = join(here, "fixtures");
// Inside the package so `@herald/client` resolves from node_modules.
const work = join(here, ".tmp-codegen");
const tsc = resolve(here, "../node_modules/typescript/bin/tsc");

function typecheck(file: string): { ok: boolean; output: string } {
  const project = join(work, `tsconfig.${file}.json`);
  writeFileSync(
    project,
    JSON.stringify({
      compilerOptions: {
        noEmit: true, strict: true, noImplicitAny: true, target: "es2022", module: "nodenext",
        moduleResolution: "nodenext", skipLibCheck: true, types: [],
      },
      files: [file],
    }),
  );
  const r = spawnSync(process.execPath, [tsc, "-p", project, "--pretty", "false"], { encoding: "utf8" });
  return { ok: r.status === 0, output: r.stdout + r.stderr };
}

describe("herald codegen typescript", () => {
  let generated = "";
  beforeAll(() => {
    rmSync(work, { recursive: true, force: true });
    mkdirSync(work, { recursive: true });
    execFileSync(heraldBin, ["codegen", "typescript", "--config", join(fixtures, "codegen.toml"), "--out", join(work, "channels.ts")], {
      env: { PATH: process.env["PATH"] ?? "" },
    });
    generated = readFileSync(join(work, "channels.ts"), "utf8");
    for (const f of ["usage-ok.ts", "usage-bad.ts", "server-usage-ok.ts", "server-usage-bad.ts", "socketio-usage.ts"]) copyFileSync(join(fixtures, f), join(work, f));
  });

  it("writes one type per channel and a map with template-literal keys", () => {
    expect(generated).toContain('"blog.article.feed": BlogArticleFeed;');
    expect(generated).toContain("[channel: `notifications.user.${string}`]: NotificationsUser;");
    expect(generated).toContain("[channel: `orders.${string}.order.${string}`]: OrdersOrder;");
    expect(generated).toContain("export type OrdersOrderLine = { qty: number; sku: string };");
    expect(generated).toContain('{ count: number; type: "digest" }');
  });

  it("the generated types and correct usage compile", () => {
    const r = typecheck("usage-ok.ts");
    expect(r.output).toBe("");
    expect(r.ok).toBe(true);
  });

  it("every wrong payload, channel or field fails tsc, and nothing else does", () => {
    const r = typecheck("usage-bad.ts");
    expect(r.ok).toBe(false);
    const source = readFileSync(join(work, "usage-bad.ts"), "utf8").split("\n");
    const expected = source.flatMap((l, i) => (l.includes("// expect-error") ? [i + 1] : []));
    const failing = [...new Set([...r.output.matchAll(/usage-bad\.ts\((\d+),\d+\): error/g)].map((m) => Number(m[1])))];
    expect(expected.length).toBe(11);
    expect(failing.sort((a, b) => a - b)).toEqual(expected);
  });

  it("@herald/server: typed publishing compiles", () => {
    const r = typecheck("server-usage-ok.ts");
    expect(r.output).toBe("");
    expect(r.ok).toBe(true);
  });

  it("@herald/server: every wrong channel or payload fails tsc, and nothing else does", () => {
    const r = typecheck("server-usage-bad.ts");
    expect(r.ok).toBe(false);
    const source = readFileSync(join(work, "server-usage-bad.ts"), "utf8").split("\n");
    const expected = source.flatMap((l, i) => (l.includes("// expect-error") ? [i + 1] : []));
    const failing = [...new Set([...r.output.matchAll(/server-usage-bad\.ts\((\d+),\d+\): error/g)].map((m) => Number(m[1])))];
    expect(expected.length).toBe(9);
    expect(failing.sort((a, b) => a - b)).toEqual(expected);
  });

  it("Socket.IO: the event maps type socket.io-client code (each @ts-expect-error must fail)", () => {
    const r = typecheck("socketio-usage.ts");
    expect(r.output).toBe("");
    expect(r.ok).toBe(true);
  });

  it("the demo's committed channel types match the example herald.toml", () => {
    const fresh = execFileSync(heraldBin, ["codegen", "typescript", "--config", join(repoRoot, "herald.toml")], {
      env: { PATH: process.env["PATH"] ?? "" },
      encoding: "utf8",
    });
    const committed = readFileSync(join(here, "../demo/src/channels.ts"), "utf8");
    // If this fails: herald codegen typescript --config herald.toml --out clients/typescript/demo/src/channels.ts
    expect(committed).toBe(fresh);
  });
});
