// A TCP proxy between a client and the gateway that a test can cut: the gateway keeps
// running (same history, same epoch) while the client sees its socket drop.
import { createServer, connect, type Server, type Socket } from "node:net";

export class CuttableProxy {
  private readonly sockets = new Set<Socket>();
  private blocked = false;
  port = 0;

  private constructor(private readonly server: Server) {}

  static async start(targetPort: number): Promise<CuttableProxy> {
    let proxy: CuttableProxy | null = null;
    const server = createServer((client) => {
      if (!proxy || proxy.blocked) {
        client.destroy();
        return;
      }
      const upstream = connect(targetPort, "127.0.0.1");
      const p = proxy;
      for (const s of [client, upstream]) {
        p.sockets.add(s);
        s.on("close", () => p.sockets.delete(s));
        s.on("error", () => {});
      }
      client.pipe(upstream);
      upstream.pipe(client);
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
    proxy = new CuttableProxy(server);
    await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
    const addr = server.address();
    proxy.port = typeof addr === "object" && addr ? addr.port : 0;
    return proxy;
  }

  get ws(): string {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  /** Destroys every open connection and refuses new ones until `unblock()`. */
  cut(): void {
    this.blocked = true;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  unblock(): void {
    this.blocked = false;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((ok) => this.server.close(() => ok()));
  }
}
