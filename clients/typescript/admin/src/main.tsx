// The admin dashboard at /admin (crates/herald-server/src/admin): sign-in, then four pages
// fed by the admin API and by the gateway itself — the page is a @herald/client connection
// (admitted with a one-time ticket) subscribed to `$admin:nodes` and to the channels it tails.
import { StrictMode, useEffect, useMemo, useState, useSyncExternalStore, type FormEvent } from "react";
import { createRoot } from "react-dom/client";
import { Herald } from "@herald/client";
import { HeraldProvider, useConnectionState } from "@herald/react";

import { ApiError, api, probeSession, setSession, signIn, whenSignedOut, type SessionInfo } from "./api.js";
import { ChannelPage, Channels } from "./channels.js";
import { Overview } from "./overview.js";
import { Registry } from "./registry.js";
import { type Snapshot, StatsStore } from "./stats.js";
import { StatsFeed } from "./store.js";
import { Users } from "./users.js";

function useHash(): string {
  return useSyncExternalStore(
    (f) => (window.addEventListener("hashchange", f), () => window.removeEventListener("hashchange", f)),
    () => location.hash,
  );
}

function SignIn({ onDone, notice }: { onDone: (s: SessionInfo) => void; notice: string }) {
  const [user, setUser] = useState("admin");
  const [password, setPassword] = useState("");
  const [error, setError] = useState("");
  const submit = async (ev: FormEvent) => {
    ev.preventDefault();
    setError("");
    try {
      onDone(await signIn(user, password));
    } catch (e) {
      setError(e instanceof ApiError ? e.body.message : (e as Error).message);
    }
  };
  return (
    <section className="login">
      <h2>Herald admin: sign in</h2>
      {notice ? <p className="muted">{notice}</p> : null}
      <form onSubmit={submit}>
        <input id="login-user" type="text" autoComplete="username" value={user} onChange={(e) => setUser(e.target.value)} />
        <input id="login-password" type="password" autoComplete="current-password" placeholder="password" value={password} onChange={(e) => setPassword(e.target.value)} />
        <button className="action" id="login-submit">
          Sign in
        </button>
        {error ? (
          <p className="error" id="login-error">
            {error}
          </p>
        ) : null}
      </form>
    </section>
  );
}

function StateBadge() {
  const state = useConnectionState();
  return (
    <span className={`badge ${state}`} id="live-state" title="the dashboard's own gateway connection">
      {state === "connected" ? "live" : state}
    </span>
  );
}

function Dashboard({ session, onSignOut }: { session: SessionInfo; onSignOut: () => void }) {
  const hash = useHash();
  const store = useMemo(() => new StatsStore(), []);
  const herald = useMemo(() => {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    return new Herald(`${proto}://${location.host}/v1/ws`, {
      // A one-time ticket per connection attempt; refused once the session has ended.
      getToken: async () => (await api.post<{ ticket: string }>("/admin/api/ticket")).ticket,
      transports: ["websocket"],
      maxReconnectDelayMs: 3_000,
    });
  }, []);
  // This node's figures at once, before the first live snapshot arrives.
  useEffect(() => {
    void api.get<{ nodes: Snapshot[] }>("/admin/api/overview").then((r) => r.nodes.forEach((s) => store.add(s)), () => {});
  }, [store]);
  // Use of the page (not its own refreshes) keeps the session from its idle timeout.
  useEffect(() => {
    let last = Date.now();
    const used = () => {
      if (Date.now() - last < 30_000) return;
      last = Date.now();
      void api.get("/admin/api/session").catch(() => {});
    };
    window.addEventListener("pointerdown", used);
    window.addEventListener("keydown", used);
    return () => (window.removeEventListener("pointerdown", used), window.removeEventListener("keydown", used));
  }, []);
  const [page, arg] = (() => {
    const parts = hash.replace(/^#\/?/, "").split("/");
    return [parts[0] || "overview", parts.slice(1).map(decodeURIComponent).join("/") || null] as const;
  })();
  const signOut = async () => {
    await api.post("/admin/api/logout").catch(() => {});
    onSignOut();
  };
  const nav = (id: string, label: string) => (
    <a href={`#/${id}`} className={page === id || (id === "channels" && page === "channel") ? "active" : ""} id={`nav-${id}`}>
      {label}
    </a>
  );
  return (
    <HeraldProvider client={herald}>
      <StatsFeed store={store}>
        <header>
          <h1>Herald admin</h1>
          <nav>
            {nav("overview", "Overview")}
            {nav("channels", "Channels")}
            {nav("users", "Users")}
            {nav("registry", "Registry")}
          </nav>
          <StateBadge />
          <span className="muted" style={{ color: "#cbd2e0" }}>
            {session.user} · node {session.node}
          </span>
          <button id="sign-out" onClick={() => void signOut()}>
            Sign out
          </button>
        </header>
        {page === "channels" ? (
          <Channels />
        ) : page === "channel" && arg ? (
          <ChannelPage key={arg} name={arg} />
        ) : page === "users" ? (
          <Users selected={arg} />
        ) : page === "registry" ? (
          <Registry />
        ) : (
          <Overview />
        )}
      </StatsFeed>
    </HeraldProvider>
  );
}

function App() {
  const [session, setSess] = useState<SessionInfo | null | undefined>(undefined);
  const [notice, setNotice] = useState("");
  useEffect(() => {
    whenSignedOut(() => {
      setSession(null);
      setSess(null);
      setNotice("Your session ended (idle timeout, sign-out or restart). Sign in again.");
    });
    void probeSession().then(setSess);
  }, []);
  if (session === undefined) return <p className="muted">Loading…</p>;
  if (session === null) return <SignIn onDone={(s) => (setNotice(""), setSess(s))} notice={notice} />;
  return (
    <Dashboard
      session={session}
      onSignOut={() => {
        setSession(null);
        setSess(null);
      }}
    />
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
