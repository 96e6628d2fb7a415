// Starts the real `herald` binary on a free port for a test, and talks to its server API.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import { mintToken, realNow } from "./jwt.js";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "../../../..");
/**
 * The binary under test: `TEST_HERALD_BIN`, else `target/debug/herald` (`cargo build -p herald`).
 * (Not `HERALD_…`: the gateway reads every `HERALD_*` variable as a config setting.)
 */
export const heraldBin = process.env["TEST_HERALD_BIN"] ?? join(repoRoot, "target/debug/herald");

/** The environment without `HERALD_*` settings that would override the test config. */
function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("HERALD_")) env[k] = v;
  env["HERALD_LOG"] = process.env["HERALD_LOG"] ?? "warn";
  return env;
}

export const SECRET = "test-secret";
export const API_KEY = "test-api-key";

export const CHANNELS = `
[[channel]]
name = "blog.article.feed"
scope = "public"
history = { size = 100, ttl = "10m" }
schema = { type = "object", required = ["id", "title"], additionalProperties = false, properties = { id = { type = "string" }, title = { type = "string" } } }

[[channel]]
name = "notifications.user.{userId}"
scope = "user"
auto_subscribe = true
history = { size = 50, ttl = "5m" }
schema = { type = "object", required = ["type"], properties = { type = { enum = ["mention", "reply", "system"] }, text = { type = "string" } } }

[[channel]]
name = "chat.room.{roomId}"
scope = "authenticated"
publish = "authenticated"
presence = true
history = { size = 100, ttl = "10m" }
schema = { type = "object", required = ["text"], properties = { text = { type = "string", maxLength = 2000 }, user = { type = "string" } } }

[[channel]]
name = "ops.alerts"
scope = { role = "admin" }
schema = { type = "object" }
`;

export interface GatewayOptions {
  /** Extra lines for the `[server]` section, e.g. `ping_interval = "300ms"`. */
  server?: string;
  /** Bind this port (to restart a gateway where clients expect it); default: a free one. */
  port?: number;
}

export class Gateway {
  private child: ChildProcess | null = null;
  port = 0;
  private readonly dir = mkdtempSync(join(tmpdir(), "herald-ts-"));

  private constructor(private readonly opts: GatewayOptions) {}

  static async start(opts: GatewayOptions = {}): Promise<Gateway> {
    const gw = new Gateway(opts);
    await gw.spawn(opts.port ?? 0);
    return gw;
  }

  get http(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get ws(): string {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  get running(): boolean {
    return this.child !== null;
  }

  private async spawn(port: number): Promise<void> {
    const config = join(this.dir, "herald.toml");
    writeFileSync(
      config,
      `[server]
listen = "127.0.0.1:${port}"
demo = true
shutdown_spread = "0s"
shutdown_grace = "1s"
${this.opts.server ?? ""}

[auth]
hs256_secret = "${SECRET}"

[api]
key = "${API_KEY}"
${CHANNELS}`,
    );
    const child = spawn(heraldBin, ["serve", "--config", config], {
      stdio: ["ignore", "pipe", "pipe"],
      env: childEnv(),
    });
    let stderr = "";
    child.stderr?.on("data", (b: Buffer) => {
      stderr += b.toString();
      if (process.env["TEST_HERALD_VERBOSE"]) process.stderr.write(b);
    });
    const lines = createInterface({ input: child.stdout! });
    this.port = await new Promise<number>((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`herald did not start: ${stderr}`)), 15_000);
      child.once("exit", (code) => fail(new Error(`herald exited with ${code}: ${stderr}`)));
      lines.once("line", (line) => {
        clearTimeout(timer);
        const m = /herald listening on http:\/\/[\d.]+:(\d+)/.exec(line);
        if (m) ok(Number(m[1]));
        else fail(new Error(`unexpected first line: ${line}`));
      });
    });
    this.child = child;
  }

  /** Kills the process (SIGKILL: no goodbye to the clients, history lost). */
  async kill(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = null;
    const exited = new Promise((ok) => child.once("exit", ok));
    child.kill("SIGKILL");
    await exited;
  }

  /** Graceful stop (SIGTERM). */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = null;
    const exited = new Promise((ok) => child.once("exit", ok));
    child.kill("SIGTERM");
    await exited;
  }

  /** Starts again on the same port: a new process, so a new epoch for every channel. */
  async restart(): Promise<void> {
    await this.kill();
    await this.spawn(this.port);
  }

  token(user: string, opts: { roles?: string[]; ttlSeconds?: number; noIat?: boolean; secret?: string } = {}): string {
    return mintToken(opts.secret ?? SECRET, user, opts.roles ?? [], opts.ttlSeconds ?? 3600, { noIat: opts.noIat ?? false });
  }

  async publish(channel: string, data: unknown): Promise<{ offset: number; epoch: string }> {
    const res = await fetch(`${this.http}/v1/publish`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ channel, data }),
    });
    const body = (await res.json()) as { offset: number; epoch: string };
    if (!res.ok) throw new Error(`publish ${res.status}: ${JSON.stringify(body)}`);
    return body;
  }
}

/** Polls `check` until it returns true (or throws after `ms`). */
export async function until(check: () => boolean, ms = 10_000, what = "condition"): Promise<void> {
  const deadline = realNow() + ms;
  while (!check()) {
    if (realNow() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

export const sleep = (ms: number) => new Promise<void>((ok) => setTimeout(ok, ms));
