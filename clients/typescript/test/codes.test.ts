// codes.ts is hand-mirrored from the gateway; this keeps it true: every close code of the
// "Closing" table in docs/protocol.md and every `Goodbye` code of herald-core is in
// `CloseCode` with the same reconnect rule, and the error codes match the documented list.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { CloseCode, ERROR_CODES, NO_RECONNECT_CODES } from "@herald/client";

import { repoRoot } from "./helpers/gateway.js";

const protocolMd = readFileSync(join(repoRoot, "docs/protocol.md"), "utf8");

/** Rows `| 4001 | … | true |` of the "Closing" table. */
function documentedCloseCodes(): Map<number, boolean> {
  const section = protocolMd.slice(protocolMd.indexOf("## Closing"));
  const rows = new Map<number, boolean>();
  for (const m of section.matchAll(/^\|\s*(\d{4})\s*\|.*\|\s*(true|false)\s*\|\s*$/gm)) rows.set(Number(m[1]), m[2] === "true");
  return rows;
}

/**
 * The gateway's own table: `Goodbye::X => 4001` arms of `Goodbye::code` and the variants
 * `Goodbye::reconnect` excludes, read from herald-core's sources (wherever they live there).
 * Returns code → reconnect.
 */
function rustGoodbyes(): Map<number, boolean> {
  let source = "";
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (name.endsWith(".rs")) {
        const text = readFileSync(path, "utf8");
        if (text.includes("enum Goodbye")) source += text;
      }
    }
  };
  const core = join(repoRoot, "crates/herald-core/src");
  if (existsSync(core)) walk(core);
  const body = (fn: string) => {
    const start = source.indexOf(`fn ${fn}(self)`);
    return start < 0 ? "" : source.slice(start, source.indexOf("\n    }\n", start));
  };
  const codeOf = new Map<string, number>();
  for (const m of body("code").matchAll(/((?:Goodbye::\w+\s*\|?\s*)+)=>\s*(\d{4})/g)) {
    for (const v of m[1]!.matchAll(/Goodbye::(\w+)/g)) codeOf.set(v[1]!, Number(m[2]));
  }
  const noReconnect = new Set([...body("reconnect").matchAll(/Goodbye::(\w+)/g)].map((v) => v[1]!));
  const table = new Map<number, boolean>();
  for (const [variant, code] of codeOf) table.set(code, (table.get(code) ?? true) && !noReconnect.has(variant));
  return table;
}

describe("codes.ts against the gateway", () => {
  it("has every documented close code with its reconnect rule", () => {
    const documented = documentedCloseCodes();
    expect(documented.size).toBeGreaterThanOrEqual(8);
    const ours = new Set<number>(Object.values(CloseCode));
    for (const [code, reconnect] of documented) {
      expect(ours.has(code), `close code ${code} is missing from CloseCode`).toBe(true);
      expect(!NO_RECONNECT_CODES.has(code), `reconnect rule of ${code}`).toBe(reconnect);
    }
    for (const code of ours) expect(documented.has(code), `CloseCode ${code} is not in docs/protocol.md`).toBe(true);
  });

  it("has every close code of herald-core's Goodbye with the same reconnect rule", () => {
    const goodbyes = rustGoodbyes();
    expect(goodbyes.size).toBeGreaterThanOrEqual(8);
    const ours = new Set<number>(Object.values(CloseCode));
    for (const [code, reconnect] of goodbyes) {
      expect(ours.has(code), `herald-core close code ${code} is missing from CloseCode`).toBe(true);
      expect(!NO_RECONNECT_CODES.has(code), `reconnect rule of ${code}`).toBe(reconnect);
    }
  });

  it("has the documented error codes", () => {
    const m = /^Error codes: ([\s\S]*?)\n\n/m.exec(protocolMd);
    expect(m).not.toBeNull();
    const documented = [...m![1]!.matchAll(/`([a-z_]+)`/g)].map((x) => x[1]);
    expect([...ERROR_CODES].sort()).toEqual([...new Set(documented)].sort());
  });
});
