// The demo page served at `/` by `herald serve` (server.demo = true): built from
// @herald/client and @herald/react, typed by `herald codegen typescript` (./channels.ts).
// `?transport=socketio` drives the same page with socket.io-client instead (./socketio.tsx).
import { StrictMode, useMemo, useState, useSyncExternalStore, type FormEvent } from "react";
import { createRoot } from "react-dom/client";
import { Herald, HeraldError, type PresenceClient, type TransportName } from "@herald/client";
import { HeraldProvider, useChannel, useHerald } from "@herald/react";

import type { HeraldChannels } from "./channels.js";
import { SocketIoBadge, SocketIoDashboard, socketIoClient, socketIoRequested } from "./socketio.js";
import { Badge, ChatCard, FeedCard, NotificationsCard, ROOM, senderOf, useList, usersOf } from "./views.js";
/** The private room: the demo backend (demo/backend.mjs), asked through the subscribe proxy, decides who enters. */
const VIP = "vip.room.vip";

/** `?transports=sse` (or `websocket,sse`, …) picks the transports; default: the client's. */
function transportsFromQuery(): TransportName[] | undefined {
  const raw = new URLSearchParams(location.search).get("transports");
  if (!raw) return undefined;
  const names = raw.split(",").filter((t): t is TransportName => t === "websocket" || t === "sse");
  return names.length > 0 ? names : undefined;
}

async function devToken(user: string, admin: boolean): Promise<string> {
  const res = await fetch(`/demo/token?user=${encodeURIComponent(user)}${admin ? "&role=admin" : ""}`);
  const body = (await res.json()) as { token?: string; error?: { message: string } };
  if (!res.ok || !body.token) throw new Error(body.error?.message ?? `token: HTTP ${res.status}`);
  return body.token;
}

type Session =
  | { id: number; user: string; kind: "herald"; herald: Herald<HeraldChannels> }
  | { id: number; user: string; kind: "socketio"; socket: ReturnType<typeof socketIoClient> };

function App() {
  const [user, setUser] = useState("alice");
  const [admin, setAdmin] = useState(false);
  const [session, setSession] = useState<Session | null>(null);

  const connect = (ev: FormEvent) => {
    ev.preventDefault();
    const name = user.trim();
    if (!name) return;
    if (socketIoRequested()) {
      const socket = socketIoClient(() => devToken(name, admin));
      setSession((s) => ({ id: (s?.id ?? 0) + 1, user: name, kind: "socketio", socket }));
      return;
    }
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const transports = transportsFromQuery();
    const herald = new Herald<HeraldChannels>(`${proto}://${location.host}/v1/ws`, {
      getToken: () => devToken(name, admin),
      maxReconnectDelayMs: 3_000,
      ...(transports ? { transports } : {}),
    });
    setSession((s) => ({ id: (s?.id ?? 0) + 1, user: name, kind: "herald", herald }));
  };

  const header = (
    <header>
      <h1>Herald demo</h1>
      <form onSubmit={connect} style={{ margin: 0 }}>
        <label>
          User <input id="user" type="text" value={user} size={8} onChange={(e) => setUser(e.target.value)} />
        </label>
        <label>
          <input id="admin" type="checkbox" checked={admin} onChange={(e) => setAdmin(e.target.checked)} /> admin
        </label>{" "}
        <button id="connect">Connect</button>
      </form>
      {!session ? <span id="state">idle</span> : session.kind === "herald" ? <ConnectionBadge /> : <SocketIoBadge socket={session.socket} />}
    </header>
  );
  if (!session) return header;
  if (session.kind === "socketio") {
    // A new session (another user) replaces the dashboard, which disconnects the old socket.
    return (
      <>
        {header}
        <SocketIoDashboard key={session.id} socket={session.socket} user={session.user} />
      </>
    );
  }
  // A new session (another user) replaces the provider, which disconnects the old client.
  return (
    <HeraldProvider key={session.id} client={session.herald}>
      {header}
      <Dashboard user={session.user} />
    </HeraldProvider>
  );
}

/** The connection's state and transport, from @herald/client. */
function ConnectionBadge() {
  const herald = useHerald<HeraldChannels>();
  const snapshot = useSyncExternalStore(
    (onChange) => herald.on("state", onChange),
    () => `${herald.state}|${herald.reconnectAttempt}|${herald.transport ?? ""}`,
  );
  const [state, attempt, transport] = snapshot.split("|") as [string, string, string];
  return <Badge state={state} attempt={Number(attempt)} transport={transport === "sse" ? "SSE" : "WebSocket"} />;
}

function Dashboard({ user }: { user: string }) {
  return (
    <main>
      <Notifications user={user} />
      <Feed />
      <Chat />
      <PrivateRoom />
    </main>
  );
}

function Notifications({ user }: { user: string }) {
  const [items, add] = useList<string>();
  const [missed, setMissed] = useState(false);
  const channel = `notifications.user.${user}` as const;
  useChannel<HeraldChannels, typeof channel>(channel, (n) => add(`${n.type}: ${n.text ?? ""}`), {
    onRecoveryFailed: () => setMissed(true),
  });
  return <NotificationsCard channel={channel} items={items} missed={missed} />;
}

function Feed() {
  const [items, add] = useList<string>();
  useChannel<HeraldChannels, "blog.article.feed">("blog.article.feed", (a) => add(`${a.title} (${a.id})`));
  return <FeedCard items={items} />;
}

function Chat() {
  const herald = useHerald<HeraldChannels>();
  // A conversation reads top to bottom: oldest first, newest at the bottom.
  const [messages, add] = useList<string>(100, true);
  const [present, setPresent] = useState<PresenceClient[]>([]);
  const [problem, setProblem] = useState("");

  // The sender shown is the one the gateway vouches for (`ctx.from`), never a name inside the
  // payload: any user could write `{"user":"bob"}` into a message.
  useChannel<HeraldChannels, typeof ROOM>(ROOM, (m, ctx) => add(`${senderOf(ctx.from)}: ${m.text}`), {
    // After every (re)subscription the presence list is fetched again; join/leave keep it current.
    onSubscribed: () => {
      herald.presence(ROOM).then(setPresent, (e: HeraldError) => setProblem(`${e.code}: ${e.message}`));
    },
    onPresence: (ev) =>
      setPresent((xs) =>
        ev.type === "join"
          ? [...xs.filter((c) => c.client !== ev.client), { client: ev.client, user: ev.user }]
          : xs.filter((c) => c.client !== ev.client),
      ),
  });
  const users = useMemo(() => usersOf(present), [present]);

  const send = async (text: string): Promise<string> => {
    try {
      await herald.publish(ROOM, { text });
      return "";
    } catch (e) {
      return e instanceof HeraldError ? `${e.code}: ${e.message}` : String(e);
    }
  };

  return <ChatCard users={users} messages={messages} send={send} problem={problem} />;
}

/** A room only invited users enter: gate 2 asks the demo backend, which answers allow or deny. */
function PrivateRoom() {
  const herald = useHerald<HeraldChannels>();
  const [messages, add] = useList<string>(100, true);
  const [status, setStatus] = useState("entering…");
  const [text, setText] = useState("");
  useChannel<HeraldChannels, typeof VIP>(VIP, (m, ctx) => add(`${senderOf(ctx.from)}: ${m.text}`), {
    onSubscribed: () => setStatus("entered"),
    // `forbidden` carries the backend's reason; `unavailable` means it could not be asked.
    onError: (e) => setStatus(`${e.code}: ${e.message}`),
  });
  const send = async (ev: FormEvent) => {
    ev.preventDefault();
    if (!text) return;
    try {
      await herald.publish(VIP, { text });
      setText("");
    } catch (e) {
      setStatus(e instanceof HeraldError ? `${e.code}: ${e.message}` : String(e));
    }
  };
  return (
    <section>
      <h2>
        Private room <span className="muted">{VIP}</span>
      </h2>
      <p id="vip-status" className={status === "entered" ? "muted" : "warn"}>
        {status}
      </p>
      <ul id="vip">
        {messages.map((t, i) => (
          <li key={i}>{t}</li>
        ))}
      </ul>
      {status === "entered" && (
        <form onSubmit={send}>
          <input id="vip-text" type="text" placeholder="Only invited users read this" maxLength={2000} value={text} onChange={(e) => setText(e.target.value)} />
          <button>Send</button>
        </form>
      )}
      <p className="muted">
        Invited: alice and carol. The demo backend decides (<code>node clients/typescript/demo/backend.mjs</code>).
      </p>
    </section>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
