// The registry: every descriptor with its schema, and the running config's warnings (what
// `herald check` would print besides "ok").
import { useEffect, useState } from "react";

import { api } from "./api.js";

export interface DescriptorView {
  name: string;
  scope: unknown;
  publish: unknown;
  auto_subscribe: boolean;
  history: { size: number; ttl_ms: number } | null;
  presence: boolean;
  schema: unknown;
}

export function scopeText(scope: unknown): string {
  if (scope === null || scope === undefined) return "nobody";
  if (typeof scope === "string") return scope;
  return Object.entries(scope as Record<string, string>)
    .map(([k, v]) => `${k} = ${v}`)
    .join(", ");
}

export function historyText(h: DescriptorView["history"]): string {
  return h ? `${h.size} publications, ${Math.round(h.ttl_ms / 1000)} s` : "none";
}

export function Registry() {
  const [data, setData] = useState<{ channels: DescriptorView[]; warnings: string[]; config: string | null } | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    api.get<{ channels: DescriptorView[]; warnings: string[]; config: string | null }>("/admin/api/registry").then(setData, (e: Error) => setError(e.message));
  }, []);
  if (error) return <main className="error">{error}</main>;
  if (!data) return <main className="muted">Loading…</main>;
  return (
    <main>
      <section>
        <h2>
          Registry <span className="muted">{data.config ?? "built-in example config"} · {data.channels.length} channels</span>
        </h2>
        {data.warnings.length > 0 ? (
          <div className="warn" id="warnings">
            <b>herald check warnings</b>
            <ul>
              {data.warnings.map((w) => (
                <li key={w}>{w}</li>
              ))}
            </ul>
          </div>
        ) : (
          <p className="muted" id="warnings">
            herald check: no warnings.
          </p>
        )}
      </section>
      {data.channels.map((d) => (
        <section key={d.name} className="descriptor">
          <h2>
            {d.name.includes("{") ? (
              <code title="a template: open one of its channels from the Channels page">{d.name}</code>
            ) : (
              <a href={`#/channel/${encodeURIComponent(d.name)}`}>
                <code>{d.name}</code>
              </a>
            )}
          </h2>
          <table>
            <tbody>
              <tr>
                <th>subscribe</th>
                <td>{scopeText(d.scope)}</td>
                <th>publish (clients)</th>
                <td>{scopeText(d.publish)}</td>
              </tr>
              <tr>
                <th>history</th>
                <td>{historyText(d.history)}</td>
                <th>presence</th>
                <td>{d.presence ? "yes" : "no"}</td>
              </tr>
              <tr>
                <th>auto-subscribe</th>
                <td>{d.auto_subscribe ? "yes" : "no"}</td>
                <td colSpan={2} />
              </tr>
            </tbody>
          </table>
          <Fields schema={d.schema} />
          <h3>Schema</h3>
          <pre>{JSON.stringify(d.schema, null, 2)}</pre>
        </section>
      ))}
    </main>
  );
}

type SchemaObject = {
  type?: unknown;
  enum?: unknown[];
  const?: unknown;
  properties?: Record<string, SchemaObject>;
  required?: string[];
  additionalProperties?: unknown;
  oneOf?: SchemaObject[];
  anyOf?: SchemaObject[];
  items?: SchemaObject;
  $ref?: string;
};

/** A property's type in a few words: `string`, `"mention" | "reply"`, `array of string`, `one of 3`. */
function typeText(s: SchemaObject | undefined): string {
  if (!s || typeof s !== "object") return "any";
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.$ref) return s.$ref;
  if (s.oneOf) return `one of ${s.oneOf.length}`;
  if (s.anyOf) return `any of ${s.anyOf.length}`;
  if (s.type === "array") return `array of ${typeText(s.items)}`;
  if (Array.isArray(s.type)) return s.type.join(" | ");
  return typeof s.type === "string" ? s.type : "any";
}

/** The top-level fields of an object schema as a table (the schema itself is shown below it). */
export function Fields({ schema }: { schema: unknown }) {
  const s = schema as SchemaObject;
  if (!s || typeof s !== "object" || !s.properties) return null;
  const required = new Set(s.required ?? []);
  return (
    <>
      <h3>Fields{s.additionalProperties === false ? " (no others allowed)" : ""}</h3>
      <table className="fields">
        <thead>
          <tr>
            <th>field</th>
            <th>type</th>
            <th>required</th>
          </tr>
        </thead>
        <tbody>
          {Object.entries(s.properties).map(([name, p]) => (
            <tr key={name}>
              <td>
                <code>{name}</code>
              </td>
              <td>{typeText(p)}</td>
              <td>{required.has(name) ? "yes" : ""}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}
