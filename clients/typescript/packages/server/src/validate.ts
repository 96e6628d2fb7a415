// Optional local validation against the registry's JSON Schemas (the files `herald codegen
// jsonschema` writes), with Ajv. Template channels are matched segment by segment, the way the
// gateway resolves names; a schema Ajv cannot compile is skipped with one warning (the gateway
// validates every payload anyway, this only catches mistakes before the network).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Ajv, type ValidateFunction } from "ajv";
import { Ajv2020 } from "ajv/dist/2020.js";

import type { Logger, SchemaIndex } from "./types.js";

/**
 * Reads the directory `herald codegen jsonschema --out-dir DIR` wrote: `index.json` (keyed by
 * channel name) and one schema file per channel.
 */
export function readSchemas(dir: string): SchemaIndex {
  const index = JSON.parse(readFileSync(join(dir, "index.json"), "utf8")) as { channels: Record<string, { schema: string }> };
  const out: SchemaIndex = {};
  for (const [name, entry] of Object.entries(index.channels)) {
    out[name] = JSON.parse(readFileSync(join(dir, entry.schema), "utf8")) as object;
  }
  return out;
}

export type Verdict = { ok: true } | { ok: false; code: "unknown_channel" | "invalid_payload"; message: string; pointer: string };

/** A channel name against the declared names, and its payload against the schema. */
export class LocalValidator {
  private readonly compiled = new Map<string, ValidateFunction | null>();
  private readonly ajv2020 = new Ajv2020({ strict: false, validateFormats: false, allErrors: false });
  private readonly ajv7 = new Ajv({ strict: false, validateFormats: false, allErrors: false });

  constructor(
    private readonly schemas: SchemaIndex,
    private readonly logger: Logger,
  ) {}

  check(channel: string, data: unknown): Verdict {
    const pattern = this.resolve(channel);
    if (pattern === undefined) {
      return { ok: false, code: "unknown_channel", message: `no channel of the registry matches ${JSON.stringify(channel)}`, pointer: "" };
    }
    const validate = this.compile(pattern);
    if (!validate || validate(data)) return { ok: true };
    const e = validate.errors?.[0];
    const pointer = e?.instancePath ?? "";
    return { ok: false, code: "invalid_payload", message: `${e?.message ?? "does not match the schema"} (at ${JSON.stringify(pointer)})`, pointer };
  }

  private resolve(channel: string): string | undefined {
    if (Object.hasOwn(this.schemas, channel)) return channel;
    const segments = channel.split(".");
    return Object.keys(this.schemas).find((pattern) => {
      const parts = pattern.split(".");
      return parts.length === segments.length && parts.every((p, i) => (p.startsWith("{") ? /^[A-Za-z0-9_-]+$/.test(segments[i]!) : p === segments[i]));
    });
  }

  private compile(pattern: string): ValidateFunction | null {
    if (this.compiled.has(pattern)) return this.compiled.get(pattern)!;
    const schema = this.schemas[pattern]!;
    const dialect = typeof schema === "object" ? String((schema as { $schema?: unknown }).$schema ?? "") : "";
    let fn: ValidateFunction | null = null;
    try {
      fn = (dialect.includes("draft-07") || dialect.includes("draft-06") ? this.ajv7 : this.ajv2020).compile(schema);
    } catch (e) {
      this.logger.warn("herald: cannot compile the schema for local validation; the gateway still validates", {
        channel: pattern,
        error: e instanceof Error ? e.message : String(e),
      });
    }
    this.compiled.set(pattern, fn);
    return fn;
  }
}
