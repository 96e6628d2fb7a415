// What the demo page shows, whichever client feeds it: @herald/client (main.tsx) or
// socket.io-client (socketio.tsx). Same elements and ids for both, so the page looks and is
// tested the same way.
import { useCallback, useEffect, useRef, useState, type FormEvent } from "react";

export const ROOM = "chat.room.lobby";

/** A bounded list: newest first, or (`oldestFirst`) in arrival order, newest at the bottom. */
export function useList<T>(max = 100, oldestFirst = false): [T[], (item: T) => void] {
  const [items, setItems] = useState<T[]>([]);
  const add = useCallback(
    (item: T) => setItems((xs) => (oldestFirst ? [...xs, item].slice(-max) : [item, ...xs].slice(0, max))),
    [max, oldestFirst],
  );
  return [items, add];
}

/** The vouched sender of a publication, for display (`@herald/client`'s `ctx.from` or Socket.IO's `meta.from`). */
export function senderOf(from: { server: true } | { user?: string | null; client: string }): string {
  return "server" in from ? "server" : (from.user ?? "anonymous");
}

/** "connected", "connecting", or "reconnecting (attempt N)" while it retries; and the transport. */
export function Badge({ state, attempt, transport }: { state: string; attempt: number; transport: string }) {
  const retrying = state !== "connected" && attempt > 0;
  return (
    <>
      <span id="state" className={retrying ? "reconnecting" : state}>
        {retrying ? `reconnecting (attempt ${attempt})` : state}
      </span>
      <span id="transport" className="muted-light">
        {state === "connected" ? `via ${transport}` : ""}
      </span>
    </>
  );
}

export function NotificationsCard({ channel, items, missed }: { channel: string; items: string[]; missed: boolean }) {
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

export function FeedCard({ items }: { items: string[] }) {
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

/**
 * The chat room: `users` present, `messages` oldest first (kept scrolled to the newest), and a
 * form that hands the text to `send`, which resolves with an error message or "" on success
 * (the text is cleared then).
 */
export function ChatCard({
  users,
  messages,
  send,
  problem = "",
}: {
  users: string[];
  messages: string[];
  send: (text: string) => Promise<string>;
  /** Shown when there is no send error (e.g. the presence list could not be fetched). */
  problem?: string;
}) {
  const list = useRef<HTMLUListElement>(null);
  useEffect(() => {
    const el = list.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [messages]);
  const [text, setText] = useState("");
  const [error, setError] = useState("");

  const submit = async (ev: FormEvent) => {
    ev.preventDefault();
    if (!text) return;
    const failed = await send(text);
    setError(failed);
    if (!failed) setText("");
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
      <form onSubmit={submit}>
        <input id="chat-text" type="text" placeholder="Say something" maxLength={2000} value={text} onChange={(e) => setText(e.target.value)} />
        <button>Send</button>
      </form>
      <p className="muted" id="chat-error">
        {error || problem}
      </p>
    </section>
  );
}

/** The distinct users among presence entries, sorted. */
export function usersOf(present: { user?: string | null }[]): string[] {
  return [...new Set(present.map((c) => c.user ?? "anonymous"))].sort();
}
