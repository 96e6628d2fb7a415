// A `redis-server` owned by a test: a free port, no persistence, killed and restarted at will
// (a restart loses every key, as a broker restart does). Like herald-testkit's `RedisServer`.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { sleep } from "./gateway.js";

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  await new Promise<void>((ok) => server.close(() => ok()));
  return port;
}

async function answers(port: number): Promise<boolean> {
  return new Promise((ok) => {
    const s = connect(port, "127.0.0.1");
    s.once("connect", () => (s.destroy(), ok(true)));
    s.once("error", () => ok(false));
  });
}

export class RedisServer {
  private child: ChildProcess | null = null;
  private readonly dir = mkdtempSync(join(tmpdir(), "herald-redis-"));

  private constructor(readonly port: number) {}

  static async start(): Promise<RedisServer> {
    const r = new RedisServer(await freePort());
    await r.restart();
    return r;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** Kills the server (SIGKILL); its data is lost. */
  async kill(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = null;
    const exited = new Promise((ok) => child.once("exit", ok));
    child.kill("SIGKILL");
    await exited;
  }

  /** Starts again on the same port, empty, and waits until it accepts connections. */
  async restart(): Promise<void> {
    await this.kill();
    const child = spawn(
      "redis-server",
      ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", this.dir],
      { stdio: "ignore" },
    );
    let failed: Error | null = null;
    child.once("error", (e) => (failed = e));
    this.child = child;
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      if (failed) throw new Error(`redis-server could not start (scripts/test.sh installs it): ${(failed as Error).message}`);
      if (await answers(this.port)) return;
      await sleep(20);
    }
    throw new Error(`redis-server did not start on port ${this.port}`);
  }
}
