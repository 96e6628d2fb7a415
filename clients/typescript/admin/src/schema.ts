// Client-side validation of a payload against a channel's JSON Schema, before it is sent:
// @cfworker/json-schema (drafts 4 to 2020-12, no code generation, so it runs under the page's
// Content-Security-Policy without 'unsafe-eval'). The gateway validates again (gate 3).
import { Validator } from "@cfworker/json-schema";

export interface SchemaProblem {
  /** JSON pointer (RFC 6901) of the failing value; "" is the whole payload. */
  pointer: string;
  message: string;
}

/** Parses `text` as JSON and checks it; `null` when it passes. */
export function check(schema: unknown, text: string): SchemaProblem | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return { pointer: "", message: `not JSON: ${(e as Error).message}` };
  }
  if (typeof schema === "boolean" || (schema && typeof schema === "object")) {
    const result = new Validator(schema as object, "2020-12").validate(value);
    if (result.valid) return null;
    // The deepest failure says where the payload is wrong; the outer ones only that a
    // sub-schema failed there.
    const deepest = [...result.errors].sort((a, b) => b.instanceLocation.length - a.instanceLocation.length)[0]!;
    const pointer = decodeURIComponent(deepest.instanceLocation.replace(/^#/, ""));
    return { pointer, message: deepest.error };
  }
  return null;
}
