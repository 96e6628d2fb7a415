// The demo page served at `/` by `herald serve` (server.demo = true): built from
// @herald/client and @herald/react, typed by `herald codegen typescript` (./channels.ts).
import { StrictMode, useCallback, useEffect, useMemo, useRef, useState, useSyncExternalStore, type FormEvent } from "react";
import { createRoot } from "react-dom/client";
import { Herald, HeraldError, type PresenceClient, type PublicationFrom, type TransportName } from "@herald/client";
import { HeraldProvider, useChannel, useHerald } from "@herald/react";

import type { HeraldChannels } from "./channels.js";

const ROOM = "chat.room.lobby";
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

function App() {
  const [user, setUser] = useState("alice");
  const [admin, setAdmin] = useState(false);
  const [session, setSession] = useState<{ id: number; user: string; herald: Herald<HeraldChannels> } | null>(null);

  const connect = (ev: FormEvent) => {
    ev.preventDefault();
    const name = user.trim();
    if (!name) return;
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const transports = transportsFromQuery();
    const herald = new Herald<HeraldChannels>(`${proto}://${location.host}/v1/ws`, {
      getToken: () => devToken(name, admin),
      maxReconnectDelayMs: 3_000,
      ...(transports ? { transports } : {}),
    });
    setSession((s) => ({ id: (s?.id ?? 0) + 1, user: name, herald }));
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
      {session ? <ConnectionBadge /> : <span id="state">idle</span>}
    </header>
  );
  if (!session) return header;
  // A new session (another user) replaces the provider, which disconnects the old client.
  return (
    <HeraldProvider key={session.id} client={session.herald}>
      {header}
      <Dashboard user={session.user} />
    </HeraldProvider>
  );
}

/** "connected", "connecting", or "reconnecting (attempt N)" while it retries; and the transport. */
function ConnectionBadge() {
  const herald = useHerald<HeraldChannels>();
  const snapshot = useSyncExternalStore(
    (onChange) => herald.on("state", onChange),
    () => `${herald.state}|${herald.reconnectAttempt}|${herald.transport ?? ""}`,
  );
  const [state, attempt, transport] = snapshot.split("|") as [string, string, string];
  const retrying = state !== "connected" && Number(attempt) > 0;
  return (
    <>
      <span id="state" className={retrying ? "reconnecting" : state}>
        {retrying ? `reconnecting (attempt ${attempt})` : state}
      </span>
      <span id="transport" className="muted-light">
        {state === "connected" ? `via ${transport === "sse" ? "SSE" : "WebSocket"}` : ""}
      </span>
    </>
  );
}

/** A bounded list: newest first, or (`oldestFirst`) in arrival order, newest at the bottom. */
function useList<T>(max = 100, oldestFirst = false): [T[], (item: T) => void] {
  const [items, setItems] = useState<T[]>([]);
  const add = useCallback(
    (item: T) => setItems((xs) => (oldestFirst ? [...xs, item].slice(-max) : [item, ...xs].slice(0, max))),
    [max, oldestFirst],
  );
  return [items, add];
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
  const curl = `curl -H 'Authorization: Bearer dev-api-key-change-me' -d '{"channel":"${channel}","data":{"type":"mention","text":"hi"}}' http://${location.host}/v1/publish`;
  return (
    <section>
      <h2>
        My notifications <span className="muted">{channel}</span>
      </h2>
      {missed && <p className="warn">Reconnected to a restarted gateway: older notifications may be missing.</p>}
      <ul id="notifications">
        {items.map((t, i) => (
          <li key={items.length - i}>{t}</li>
        ))}
      </ul>
      <p className="muted">
        Publish one with the server API:
        <br />
        <code>{curl}</code>
      </p>
    </section>
  );
}

function Feed() {
  const [items, add] = useList<string>();
  useChannel<HeraldChannels, "blog.article.feed">("blog.article.feed", (a) => add(`${a.title} (${a.id})`));
  return (
    <section>
      <h2>
        Public feed <span className="muted">blog.article.feed</span>
      </h2>
      <ul id="feed">
        {items.map((t, i) => (
          <li key={items.length - i}>{t}</li>
        ))}
      </ul>
    </section>
  );
}

/** The vouched sender of a publication, for display. */
function senderOf(from: PublicationFrom): string {
  return "server" in from ? "server" : (from.user ?? "anonymous");
}

function Chat() {
  const herald = useHerald<HeraldChannels>();
  // A conversation reads top to bottom: oldest first, newest at the bottom, kept in view.
  const [messages, add] = useList<string>(100, true);
  const list = useRef<HTMLUListElement>(null);
  useEffect(() => {
    const el = list.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [messages]);
  const [present, setPresent] = useState<PresenceClient[]>([]);
  const [text, setText] = useState("");
  const [error, setError] = useState("");

  // The sender shown is the one the gateway vouches for (`ctx.from`), never a name inside the
  // payload: any user could write `{"user":"bob"}` into a message.
  useChannel<HeraldChannels, typeof ROOM>(ROOM, (m, ctx) => add(`${senderOf(ctx.from)}: ${m.text}`), {
    // After every (re)subscription the presence list is fetched again; join/leave keep it current.
    onSubscribed: () => {
      herald.presence(ROOM).then(setPresent, (e: HeraldError) => setError(`${e.code}: ${e.message}`));
    },
    onPresence: (ev) =>
      setPresent((xs) =>
        ev.type === "join"
          ? [...xs.filter((c) => c.client !== ev.client), { client: ev.client, user: ev.user }]
          : xs.filter((c) => c.client !== ev.client),
      ),
  });
  const users = useMemo(() => [...new Set(present.map((c) => c.user ?? "anonymous"))].sort(), [present]);

  const send = async (ev: FormEvent) => {
    ev.preventDefault();
    if (!text) return;
    try {
      await herald.publish(ROOM, { text });
      setText("");
      setError("");
    } catch (e) {
      setError(e instanceof HeraldError ? `${e.code}: ${e.message}` : String(e));
    }
  };

  return (
    <section>
      <h2>
        Chat <span className="muted">{ROOM}</span>
      </h2>
      <div className="presence" id="presence">
        {users.map((u) => (
          <span key={u}>{u}</span>
        ))}
      </div>
      <ul id="chat" ref={list}>
        {messages.map((t, i) => (
          <li key={i}>{t}</li>
        ))}
      </ul>
      <form onSubmit={send}>
        <input id="chat-text" type="text" placeholder="Say something" maxLength={2000} value={text} onChange={(e) => setText(e.target.value)} />
        <button>Send</button>
      </form>
      <p className="muted" id="chat-error">
        {error}
      </p>
    </section>
  );
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
