// The demo page driven by socket.io-client (`?transport=socketio`, and `&transports=polling`
// or `websocket` to pin one): the code an existing Socket.IO app already has — `auth`,
// `socket.on(channel, …)`, `emit(…, ack)`, `recovered` — talking to Herald's `/socket.io/`
// (docs/socketio.md). Same cards as the @herald/client variant (./views.tsx).
import { useCallback, useEffect, useMemo, useState, useSyncExternalStore } from "react";
import { io, type Socket as IoSocket } from "socket.io-client";

import type { ClientToServerEvents, HeraldChannel, HeraldReply, ServerToClientEvents } from "./channels.js";
import { Badge, ChatCard, FeedCard, NotificationsCard, ROOM, senderOf, useList, usersOf } from "./views.js";

/** Whether the page was asked to use Socket.IO (`?transport=socketio`). */
export function socketIoRequested(): boolean {
  return new URLSearchParams(location.search).get("transport") === "socketio";
}

/** `&transports=polling` (or `websocket`, or both) pins socket.io-client's transports. */
function transportsFromQuery(): ("polling" | "websocket")[] | undefined {
  const raw = new URLSearchParams(location.search).get("transports");
  const names = (raw ?? "").split(",").filter((t): t is "polling" | "websocket" => t === "polling" || t === "websocket");
  return names.length > 0 ? names : undefined;
}

/** A socket typed by the registry (`herald codegen typescript` writes both event maps). */
export type Socket = IoSocket<ServerToClientEvents, ClientToServerEvents>;

/** The manager's current reconnect attempt per socket (0 while connected). */
const attemptOf = new WeakMap<Socket, number>();

/** A socket to this page's gateway, not connected yet (the dashboard connects it). */
export function socketIoClient(token: () => Promise<string>): Socket {
  const transports = transportsFromQuery();
  const socket: Socket = io({
    autoConnect: false,
    // A function, so every reconnect fetches a fresh token.
    auth: (cb) => {
      token().then(
        (t) => cb({ token: t }),
        () => cb({}),
      );
    },
    reconnectionDelayMax: 3_000,
    ...(transports ? { transports } : {}),
  });
  // Registered before the badge's listeners, so the badge reads the new value.
  socket.io.on("reconnect_attempt", (n) => attemptOf.set(socket, n));
  socket.on("connect", () => attemptOf.set(socket, 0));
  return socket;
}

interface Presence {
  client: string;
  user?: string | null;
}

const describe = (r: HeraldReply) => `${r.error?.code ?? "error"}: ${r.error?.message ?? ""}`;

/** Connection state for the badge: the socket's, with the manager's reconnect attempts. */
function useSocketState(socket: Socket): { state: string; attempt: number; transport: string } {
  const subscribe = useCallback(
    (onChange: () => void) => {
      // The engine changes on every reconnect, and upgrades from polling to WebSocket after it
      // connected: follow the current one.
      let engine: Socket["io"]["engine"] | undefined;
      const follow = () => {
        engine?.off("upgrade", onChange);
        engine = socket.io.engine;
        engine?.on("upgrade", onChange);
      };
      const onConnect = () => {
        follow();
        onChange();
      };
      follow();
      const events = ["disconnect", "connect_error"] as const;
      socket.on("connect", onConnect);
      for (const e of events) socket.on(e, onChange);
      socket.io.on("reconnect_attempt", onChange);
      return () => {
        socket.off("connect", onConnect);
        for (const e of events) socket.off(e, onChange);
        socket.io.off("reconnect_attempt", onChange);
        engine?.off("upgrade", onChange);
      };
    },
    [socket],
  );
  const snapshot = useSyncExternalStore(subscribe, () => {
    const state = socket.connected ? "connected" : socket.active ? "connecting" : "disconnected";
    const attempt = socket.connected ? 0 : (attemptOf.get(socket) ?? 0);
    return `${state}|${attempt}|${socket.connected ? socket.io.engine.transport.name : ""}`;
  });
  const [state, attempt, transport] = snapshot.split("|") as [string, string, string];
  return { state, attempt: Number(attempt), transport };
}

export function SocketIoBadge({ socket }: { socket: Socket }) {
  const { state, attempt, transport } = useSocketState(socket);
  return <Badge state={state} attempt={attempt} transport={`Socket.IO (${transport})`} />;
}

export function SocketIoDashboard({ socket, user }: { socket: Socket; user: string }) {
  // Children attach their listeners first (their effects run before this one), then connect;
  // unmounting (another user) disconnects for good.
  useEffect(() => {
    socket.connect();
    return () => {
      socket.disconnect();
    };
  }, [socket]);
  return (
    <main>
      <Notifications socket={socket} user={user} />
      <Feed socket={socket} />
      <Chat socket={socket} />
    </main>
  );
}

/** The user's own channel: auto-subscribed by the gateway, so only a listener is needed. */
function Notifications({ socket, user }: { socket: Socket; user: string }) {
  const [items, add] = useList<string>();
  const [missed, setMissed] = useState(false);
  const channel = `notifications.user.${user}` as const;
  useEffect(() => {
    let before = false;
    const onNotification = (n: { type: string; text?: string }) => add(`${n.type}: ${n.text ?? ""}`);
    // A reconnect the gateway could not recover (e.g. it restarted): say so instead of pretending.
    const onConnect = () => {
      if (before && !socket.recovered) setMissed(true);
      before = true;
    };
    socket.on(channel, onNotification);
    socket.on("connect", onConnect);
    return () => {
      socket.off(channel, onNotification);
      socket.off("connect", onConnect);
    };
  }, [socket, channel, add]);
  return <NotificationsCard channel={channel} items={items} missed={missed} />;
}

/** Subscribes on every connect that did not recover the subscription. */
function useSubscription(socket: Socket, channel: HeraldChannel, onSubscribed: () => void, onError: (message: string) => void): void {
  useEffect(() => {
    const subscribe = () => {
      if (socket.recovered) return onSubscribed();
      socket.emit("subscribe", { channel }, (r) => (r.ok ? onSubscribed() : onError(describe(r))));
    };
    socket.on("connect", subscribe);
    return () => {
      socket.off("connect", subscribe);
    };
  }, [socket, channel, onSubscribed, onError]);
}

const ignore = () => {};

function Feed({ socket }: { socket: Socket }) {
  const [items, add] = useList<string>();
  useSubscription(socket, "blog.article.feed", ignore, console.error);
  useEffect(() => {
    const onArticle = (a: { id: string; title: string }) => add(`${a.title} (${a.id})`);
    socket.on("blog.article.feed", onArticle);
    return () => {
      socket.off("blog.article.feed", onArticle);
    };
  }, [socket, add]);
  return <FeedCard items={items} />;
}

function Chat({ socket }: { socket: Socket }) {
  const [messages, add] = useList<string>(100, true);
  const [present, setPresent] = useState<Presence[]>([]);
  const [problem, setProblem] = useState("");

  // After every (re)subscription the presence list is fetched again; join/leave keep it current.
  const [fetchPresence] = useState(() => () => {
    socket.emit("presence", { channel: ROOM }, (r) => (r.ok ? setPresent((r["clients"] as Presence[] | undefined) ?? []) : setProblem(describe(r))));
  });
  useSubscription(socket, ROOM, fetchPresence, setProblem);
  useEffect(() => {
    // The sender shown is the one the gateway vouches for (`meta.from`), never a name inside
    // the payload.
    const onMessage: ServerToClientEvents[typeof ROOM] = (m, meta) => add(`${senderOf(meta.from)}: ${m.text}`);
    const onJoin: ServerToClientEvents["herald:join"] = (ev) => {
      if (ev.channel === ROOM) setPresent((xs) => [...xs.filter((c) => c.client !== ev.client), { client: ev.client, user: ev.user }]);
    };
    const onLeave: ServerToClientEvents["herald:leave"] = (ev) => {
      if (ev.channel === ROOM) setPresent((xs) => xs.filter((c) => c.client !== ev.client));
    };
    socket.on(ROOM, onMessage);
    socket.on("herald:join", onJoin);
    socket.on("herald:leave", onLeave);
    return () => {
      socket.off(ROOM, onMessage);
      socket.off("herald:join", onJoin);
      socket.off("herald:leave", onLeave);
    };
  }, [socket, add]);
  const users = useMemo(() => usersOf(present), [present]);

  // `emit("<channel>", data, ack)` is a client publish through the gateway's gate 3.
  const send = async (text: string): Promise<string> => {
    try {
      const r: HeraldReply = await socket.timeout(5_000).emitWithAck(ROOM, { text });
      return r.ok ? "" : describe(r);
    } catch (e) {
      return String(e);
    }
  };

  return <ChatCard users={users} messages={messages} send={send} problem={problem} />;
}
