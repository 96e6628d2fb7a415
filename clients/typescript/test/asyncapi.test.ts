// `herald codegen asyncapi` checked by the official AsyncAPI parser: the documents of the example
// herald.toml, the codegen fixture and the registry these tests run parse with no error or
// warning, and every channel (address, parameters, Herald's rules) and every payload schema
// comes back as the registry declares it (compared with `herald codegen jsonschema`'s files).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Parser } from "@asyncapi/parser";
import { describe, expect, it } from "vitest";

import { CHANNELS, heraldBin, repoRoot } from "./helpers/gateway.js";

const env = { PATH: process.env["PATH"] ?? "" };
const work = mkdtempSync(join(tmpdir(), "herald-asyncapi-"));
const harness = join(work, "harness.toml");
writeFileSync(harness, `[auth]\nhs256_secret = "s"\n${CHANNELS}`);

const registries: Array<[string, string]> = [
  ["herald.toml", join(repoRoot, "herald.toml")],
  ["the codegen fixture", join(repoRoot, "clients/typescript/test/fixtures/codegen.toml")],
  ["the test gateway's registry", harness],
];

interface IndexEntry {
  schema: string;
  type: string;
  params: string[];
  scope: unknown;
  publish: unknown;
}

/** The schema with every local `$ref` replaced by what it points at (as the parser does). */
function deref(node: unknown, root: unknown, depth = 0): unknown {
  if (depth > 32) throw new Error("recursive $ref");
  if (Array.isArray(node)) return node.map((n) => deref(n, root, depth));
  if (node === null || typeof node !== "object") return node;
  const ref = (node as { $ref?: unknown }).$ref;
  if (typeof ref === "string" && ref.startsWith("#")) {
    const target = ref
      .slice(2)
      .split("/")
      .filter((s) => s !== "")
      .reduce<unknown>((at, token) => (at as Record<string, unknown>)[token.replace(/~1/g, "/").replace(/~0/g, "~")], root);
    return deref(target, root, depth + 1);
  }
  return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, deref(v, root, depth)]));
}

/** The parsed payload without the parser's own `x-parser-*` annotations. */
function clean(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(clean);
  if (node === null || typeof node !== "object") return node;
  return Object.fromEntries(Object.entries(node).filter(([k]) => !k.startsWith("x-parser-")).map(([k, v]) => [k, clean(v)]));
}

describe.each(registries)("herald codegen asyncapi of %s", (_name, config) => {
  it("parses with @asyncapi/parser with no errors and round-trips every channel and schema", async () => {
    const text = execFileSync(heraldBin, ["codegen", "asyncapi", "--config", config], { env, encoding: "utf8" });
    const { document, diagnostics } = await new Parser().parse(text);
    // Severity 0 is an error, 1 a warning (2 and 3 are information and hints).
    expect(diagnostics.filter((d) => d.severity <= 1).map((d) => `${d.code}: ${d.message} at ${d.path.join("/")}`)).toEqual([]);
    expect(document).toBeDefined();
    expect(document!.version()).toBe("3.0.0");

    const out = mkdtempSync(join(work, "schemas-"));
    execFileSync(heraldBin, ["codegen", "jsonschema", "--config", config, "--out-dir", out], { env });
    const index = (JSON.parse(readFileSync(join(out, "index.json"), "utf8")) as { channels: Record<string, IndexEntry> }).channels;

    const channels = document!.channels().all();
    expect(channels.map((c) => c.address()).sort()).toEqual(Object.keys(index).sort());
    for (const ch of channels) {
      const entry = index[ch.address()!]!;
      expect(ch.parameters().all().map((p) => p.id()).sort()).toEqual([...entry.params].sort());
      const rules = ch.extensions().get("x-herald")?.value() as { scope: unknown; publish: unknown };
      expect(rules.scope).toEqual(entry.scope);
      expect(rules.publish).toEqual(entry.publish);
      const clientPublish = document!.operations().all().filter((o) => o.action() === "receive" && o.channels().all().some((c) => c.id() === ch.id()));
      expect(clientPublish).toHaveLength(entry.publish === null ? 1 : 2);

      const original = JSON.parse(readFileSync(join(out, entry.schema), "utf8")) as Record<string, unknown>;
      if (original["title"] === entry.type) delete original["title"];
      const messages = ch.messages().all();
      expect(messages).toHaveLength(1);
      const payload = clean(messages[0]!.payload()!.json()) as { schema?: unknown; schemaFormat?: string };
      expect(payload.schemaFormat).toBe("application/schema+json;version=draft-07");
      expect(payload.schema).toEqual(deref(original, original));
    }
  });
});
