// Starts the real `herald` binary on a free port for a test, and talks to its server API.
// Finds the binary the way cargo does, and says why when it cannot start it.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import { mintToken, realNow } from "./jwt.js";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "../../../..");

export interface Located {
  path: string;
  /** Where the path came from, for error messages. */
  from: string;
}

/**
 * The binary under test, found the way cargo builds it: `TEST_HERALD_BIN` or `HERALD_BIN` when
 * set, else `debug/herald` under `cargo metadata`'s `target_directory` (which honours
 * `CARGO_TARGET_DIR`, `.cargo/config.toml` and workspaces), else `target/debug/herald` in the repo.
 * (The gateway itself never sees `HERALD_BIN`: `childEnv` strips every `HERALD_*` variable.)
 */
export function locateHerald(env: NodeJS.ProcessEnv = process.env, cwd: string = repoRoot): Located {
  for (const name of ["TEST_HERALD_BIN", "HERALD_BIN"]) {
    const value = env[name];
    if (value) return { path: resolve(value), from: `$${name}` };
  }
  const exe = process.platform === "win32" ? "herald.exe" : "herald";
  try {
    const out = execFileSync("cargo", ["metadata", "--format-version", "1", "--no-deps"], {
      cwd,
      env,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      maxBuffer: 64 * 1024 * 1024,
    });
    const dir = (JSON.parse(out) as { target_directory: string }).target_directory;
    return { path: join(dir, "debug", exe), from: `cargo metadata's target_directory (${dir})` };
  } catch (e) {
    const why = e instanceof Error ? e.message.split("\n")[0] : String(e);
    return { path: join(cwd, "target", "debug", exe), from: `the repository's target/ (cargo metadata failed: ${why})` };
  }
}

const located = locateHerald();
/** The binary under test (see `locateHerald`). */
export const heraldBin = located.path;

/** The last `n` non-empty lines of a process's output. */
function lastLines(text: string, n = 20): string {
  const lines = text.split("\n").filter((l) => l.trim() !== "");
  return lines.length === 0 ? "(no output)" : lines.slice(-n).join("\n");
}

/** Why the binary could not be started, with everything needed to fix it. */
export function startFailure(bin: Located, what: string, output: string): Error {
  return new Error(
    `herald did not start: ${what}\n` +
      `  binary: ${bin.path} (from ${bin.from}; build it with \`cargo build -p herald\` or set TEST_HERALD_BIN)\n` +
      `  last lines of its output:\n${lastLines(output).replace(/^/gm, "    ")}`,
  );
}

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
  /** Extra sections, e.g. `[limits]\nmax_connections_per_user = 1`. */
  sections?: string;
  /** Bind this port (to restart a gateway where clients expect it); default: a free one. */
  port?: number;
  /** Extra `[[channel]]` descriptors after the shared `CHANNELS`. */
  channels?: string;
}

export class Gateway {
  private child: ChildProcess | null = null;
  port = 0;

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

  get sse(): string {
    return `http://127.0.0.1:${this.port}/v1/sse`;
  }

  get running(): boolean {
    return this.child !== null;
  }

  private async spawn(port: number): Promise<void> {
    // The gateway reads its config once, at startup: the file goes as soon as it has started
    // (or failed to), so test runs leave nothing behind in the temp dir.
    const dir = mkdtempSync(join(tmpdir(), "herald-ts-"));
    try {
      await this.spawnWith(join(dir, "herald.toml"), port);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  private async spawnWith(config: string, port: number): Promise<void> {
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
${this.opts.sections ?? ""}
${CHANNELS}
${this.opts.channels ?? ""}`,
    );
    this.port = await startHerald(located, ["serve", "--config", config], (child) => (this.child = child));
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

  /** Kicks every connection of `user` through the server API; resolves with how many were ended. */
  async kick(user: string): Promise<number> {
    const res = await fetch(`${this.http}/v1/users/${encodeURIComponent(user)}/disconnect`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}` },
    });
    const body = (await res.json()) as { disconnected: number };
    if (!res.ok) throw new Error(`kick ${res.status}: ${JSON.stringify(body)}`);
    return body.disconnected;
  }
}

/**
 * Spawns `bin` with `args` and resolves with the port from its "herald listening on" line; on
 * failure rejects with the path tried, the exit code (or spawn error) and its last output lines.
 */
export async function startHerald(bin: Located, args: string[], started: (child: ChildProcess) => void = () => {}): Promise<number> {
  const child = spawn(bin.path, args, { stdio: ["ignore", "pipe", "pipe"], env: childEnv() });
  let output = "";
  child.stderr?.on("data", (b: Buffer) => {
    output += b.toString();
    if (process.env["TEST_HERALD_VERBOSE"]) process.stderr.write(b);
  });
  const lines = createInterface({ input: child.stdout! });
  const port = await new Promise<number>((ok, fail) => {
    let done = false;
    const finish = (f: () => void) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      f();
    };
    const timer = setTimeout(
      () => finish(() => (child.kill("SIGKILL"), fail(startFailure(bin, "no \"herald listening on\" line within 15 s", output)))),
      15_000,
    );
    child.once("error", (e) => finish(() => fail(startFailure(bin, `could not run it: ${e.message}`, output))));
    child.once("exit", (code, signal) =>
      // Let the last stderr chunk arrive before quoting it.
      setTimeout(() => finish(() => fail(startFailure(bin, `it exited with ${code === null ? `signal ${signal}` : `exit code ${code}`}`, output))), 50),
    );
    lines.on("line", (line) => {
      output += `${line}\n`;
      const m = /herald listening on http:\/\/[\d.]+:(\d+)/.exec(line);
      if (m) finish(() => ok(Number(m[1])));
    });
  });
  started(child);
  return port;
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
