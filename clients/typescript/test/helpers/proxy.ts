// Proxies between a client and the gateway: a TCP proxy a test can cut (the gateway keeps
// running, same history and epoch, while the client sees its connection drop) and point at
// another node (a load balancer without sticky sessions), and an HTTP
// proxy that refuses WebSocket upgrades (to prove the fallback to SSE).
import { createServer as createHttpServer, request as httpRequest, type Server as HttpServer } from "node:http";
import { createServer, connect, type Server, type Socket } from "node:net";

export class CuttableProxy {
  private readonly sockets = new Set<Socket>();
  private blocked = false;
  port = 0;
  /** Where new connections go (`retarget` changes it; open ones stay where they are). */
  target: number;
  /** Connections opened so far, by target port. */
  readonly opened = new Map<number, number>();

  private constructor(
    private readonly server: Server,
    targetPort: number,
  ) {
    this.target = targetPort;
  }

  static async start(targetPort: number): Promise<CuttableProxy> {
    let proxy: CuttableProxy | null = null;
    const server = createServer((client) => {
      if (!proxy || proxy.blocked) {
        client.destroy();
        return;
      }
      const p = proxy;
      const upstream = connect(p.target, "127.0.0.1");
      p.opened.set(p.target, (p.opened.get(p.target) ?? 0) + 1);
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
    proxy = new CuttableProxy(server, targetPort);
    await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
    const addr = server.address();
    proxy.port = typeof addr === "object" && addr ? addr.port : 0;
    return proxy;
  }

  get ws(): string {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  get http(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Sends new connections to `port` from now on (open ones are left alone: `cut()` them). */
  retarget(port: number): void {
    this.target = port;
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

/**
 * An HTTP reverse proxy that passes plain requests (streamed both ways, so SSE works) and
 * refuses every WebSocket upgrade with 502, like a corporate proxy that does not speak
 * WebSocket. The gateway behind it is healthy.
 */
export class NoWebSocketProxy {
  /** Upgrade requests refused so far. */
  refusedUpgrades = 0;
  port = 0;
  private readonly sockets = new Set<Socket>();

  private constructor(private readonly server: HttpServer) {}

  static async start(targetPort: number): Promise<NoWebSocketProxy> {
    const server = createHttpServer((req, res) => {
      const upstream = httpRequest(
        { host: "127.0.0.1", port: targetPort, method: req.method, path: req.url, headers: req.headers },
        (up) => {
          res.writeHead(up.statusCode ?? 502, up.headers);
          up.pipe(res);
        },
      );
      upstream.on("error", () => res.destroy());
      res.on("close", () => upstream.destroy());
      req.pipe(upstream);
    });
    const proxy = new NoWebSocketProxy(server);
    server.on("connection", (s: Socket) => {
      proxy.sockets.add(s);
      s.on("close", () => proxy.sockets.delete(s));
    });
    server.on("upgrade", (_req, socket: Socket) => {
      proxy.refusedUpgrades++;
      socket.end("HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: 26\r\nconnection: close\r\n\r\nWebSocket is not supported");
    });
    await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
    const addr = server.address();
    proxy.port = typeof addr === "object" && addr ? addr.port : 0;
    return proxy;
  }

  get http(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get ws(): string {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  /** Drops every open connection (the proxy keeps accepting new ones). */
  cut(): void {
    for (const s of this.sockets) s.destroy();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((ok) => this.server.close(() => ok()));
  }
}
