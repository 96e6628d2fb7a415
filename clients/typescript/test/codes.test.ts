// codes.ts is hand-mirrored from the gateway; this keeps it true: every close code of the
// "Closing" table in docs/protocol.md (and every close constant in herald-core) is in
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

/** `pub const NAME: u16 = 4001;` anywhere in herald-core's sources (wherever the refactor puts them). */
function rustCloseConstants(): number[] {
  const found: number[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (name.endsWith(".rs")) {
        for (const m of readFileSync(path, "utf8").matchAll(/pub const [A-Z_]+: u16 = (\d{4});/g)) found.push(Number(m[1]));
      }
    }
  };
  const core = join(repoRoot, "crates/herald-core/src");
  if (existsSync(core)) walk(core);
  return found;
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

  it("knows every close constant of herald-core", () => {
    const constants = rustCloseConstants();
    expect(constants.length).toBeGreaterThanOrEqual(5);
    const ours = new Set<number>(Object.values(CloseCode));
    for (const c of constants) expect(ours.has(c), `herald-core close code ${c} is missing from CloseCode`).toBe(true);
  });

  it("has the documented error codes", () => {
    const m = /^Error codes: ([\s\S]*?)\n\n/m.exec(protocolMd);
    expect(m).not.toBeNull();
    const documented = [...m![1]!.matchAll(/`([a-z_]+)`/g)].map((x) => x[1]);
    expect([...ERROR_CODES].sort()).toEqual([...new Set(documented)].sort());
  });
});
