// The real `socket.io-client` against the gateway's `/socket.io/` (docs/socketio.md): the three
// ways an application configures its transports, and a tap that records everything a socket
// sees so tests can wait for events and assert on what never arrived.
import { io, type ManagerOptions, type Socket, type SocketOptions } from "socket.io-client";

import { until } from "./gateway.js";

export type ClientOptions = Partial<ManagerOptions & SocketOptions>;

/** One way to configure `socket.io-client`'s transports, and where a connection ends up. */
export interface Mode {
  name: string;
  /** Short tag for user and channel names, so the modes never share a channel. */
  tag: string;
  opts: ClientOptions;
  /** The transport the engine runs on once connected (after the upgrade, for the default). */
  transport: "websocket" | "polling";
  /** Whether the engine starts on polling and must upgrade to WebSocket. */
  upgrades: boolean;
}

export const MODES: Mode[] = [
  { name: 'transports: ["websocket"]', tag: "ws", opts: { transports: ["websocket"] }, transport: "websocket", upgrades: false },
  { name: 'transports: ["polling"]', tag: "poll", opts: { transports: ["polling"] }, transport: "polling", upgrades: false },
  { name: "the default (polling, then the upgrade)", tag: "up", opts: {}, transport: "websocket", upgrades: true },
];

/**
 * Channels for the Socket.IO tests beside the shared `CHANNELS`: events named by a payload
 * field (`socketio.event_from`) and by a fixed name (`socketio.event`).
 */
export const SOCKETIO_CHANNELS = `
[[channel]]
name = "orders.user.{userId}"
scope = "user"
auto_subscribe = true
socketio = { event_from = "/type" }
history = { size = 50, ttl = "5m" }
schema = { type = "object", properties = { type = { type = ["string", "integer"] }, id = { type = "string" } } }

[[channel]]
name = "alerts.user.{userId}"
scope = "user"
auto_subscribe = true
socketio = { event = "alert" }
schema = { type = "object" }
`;

/** Quick reconnects, so a test that cuts a connection does not wait the default 1-5 s. */
export const FAST: ClientOptions = { reconnectionDelay: 100, reconnectionDelayMax: 300, randomizationFactor: 0, timeout: 5_000 };

export interface Received {
  event: string;
  args: unknown[];
}

/** The `meta` argument of a publication event. */
export interface Meta {
  channel: string;
  offset: number;
  epoch: string;
  from: { server: true } | { user: string | null; client: string };
}

/** A socket and everything it saw. */
export class Tap {
  /** Every event from the server (not `connect`/`disconnect`), in arrival order. */
  readonly events: Received[] = [];
  readonly disconnects: string[] = [];
  readonly connectErrors: (Error & { data?: unknown })[] = [];
  /** `socket.recovered` at each `connect`. */
  readonly recovered: boolean[] = [];
  /** The engine's transport when each engine opened (before any upgrade). */
  readonly openedOn: string[] = [];
  readonly reconnectAttempts: number[] = [];
  /** Events, connects and disconnects in the order the application saw them. */
  readonly timeline: string[] = [];

  constructor(readonly socket: Socket) {
    socket.onAny((event: string, ...args: unknown[]) => {
      this.events.push({ event, args });
      this.timeline.push(event);
    });
    socket.on("connect", () => {
      this.recovered.push(socket.recovered);
      this.timeline.push("(connect)");
    });
    socket.on("disconnect", (reason) => {
      this.disconnects.push(reason);
      this.timeline.push(`(disconnect: ${reason})`);
    });
    socket.on("connect_error", (err) => this.connectErrors.push(err));
    socket.io.on("open", () => this.openedOn.push(socket.io.engine.transport.name));
    socket.io.on("reconnect_attempt", (n) => this.reconnectAttempts.push(n));
  }

  get connects(): number {
    return this.recovered.length;
  }

  /** The engine's current transport. */
  get transport(): string {
    return this.socket.io.engine.transport.name;
  }

  /** Event names seen so far. */
  names(): string[] {
    return this.events.map((e) => e.event);
  }

  /** Events named `event` (optionally only those whose first argument passes `where`). */
  all(event: string, where: (data: unknown) => boolean = () => true): Received[] {
    return this.events.filter((e) => e.event === event && where(e.args[0]));
  }

  /** Waits for the `nth` (1-based) event named `event` matching `where`; its arguments. */
  async next(event: string, where: (data: unknown) => boolean = () => true, nth = 1, ms = 5_000): Promise<unknown[]> {
    await until(() => this.all(event, where).length >= nth, ms, `event "${event}" #${nth} (saw: ${JSON.stringify(this.names())})`);
    return this.all(event, where)[nth - 1]!.args;
  }

  /** Emits with an ack and resolves with the ack's argument (the v1 reply body). */
  async ack(event: string, arg: unknown, ms = 5_000): Promise<Reply> {
    return (await this.socket.timeout(ms).emitWithAck(event, arg)) as Reply;
  }
}

export interface Reply {
  type?: string;
  ok: boolean;
  error?: { code: string; message: string; pointer?: string };
  [key: string]: unknown;
}

/** A tapped socket to `url`, connecting as soon as it is created (like `io(url)`). */
export function tapped(url: string, mode: Mode, opts: ClientOptions = {}): Tap {
  return new Tap(io(url, { forceNew: true, ...FAST, ...mode.opts, ...opts }));
}

/**
 * Waits until the socket has connected `connects` times (failing with a new `connect_error` if
 * the first connect is refused); in the default mode, also until the engine has upgraded from
 * polling to WebSocket.
 */
export async function connected(tap: Tap, mode: Mode, connects = 1): Promise<void> {
  const errorsBefore = tap.connectErrors.length;
  const refused = () => connects === 1 && tap.connectErrors.length > errorsBefore;
  await until(() => tap.connects >= connects || refused(), 10_000, `connect #${connects}`);
  if (tap.connects < connects) {
    const err = tap.connectErrors.at(-1)!;
    throw new Error(`connect_error: ${err.message} ${JSON.stringify(err.data)}`);
  }
  if (mode.upgrades) {
    await until(() => tap.transport === "websocket", 10_000, "the upgrade from polling to websocket");
  }
}

/** `meta` of a publication event's arguments (`data, meta, cursor`), checked for shape. */
export function metaOf(args: unknown[]): Meta {
  return args[1] as Meta;
}
