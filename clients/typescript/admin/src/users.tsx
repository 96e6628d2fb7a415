// Users and connections: find a user on this node, see their connections, disconnect one of
// them or all of the user's (cluster-wide, as the server API's kick: close code 4403).
import { useEffect, useState } from "react";

import { api, enc } from "./api.js";
import { fmtDuration } from "./stats.js";

interface Connection {
  client: string;
  transport: string;
  remote: string | null;
  since_ms: number;
  subscriptions: string[];
}

export function Users({ selected }: { selected: string | null }) {
  const [q, setQ] = useState("");
  const [users, setUsers] = useState<{ user: string; connections: number }[]>([]);
  const [error, setError] = useState("");
  useEffect(() => {
    const load = (background: boolean) =>
      api.get<{ users: { user: string; connections: number }[] }>(`/admin/api/users?q=${enc(q.trim())}`, background).then(
        (r) => (setUsers(r.users), setError("")),
        (e: Error) => setError(e.message),
      );
    void load(false);
    const timer = setInterval(() => void load(true), 3000);
    return () => clearInterval(timer);
  }, [q]);
  return (
    <main>
      <div className="users-grid">
        <section>
          <h2>Users on this node</h2>
          <input id="user-search" type="search" placeholder="find a user" value={q} onChange={(e) => setQ(e.target.value)} />
          {error ? <p className="error">{error}</p> : null}
          <table id="users">
            <tbody>
              {users.map((u) => (
                <tr key={u.user} className={u.user === selected ? "selected" : ""}>
                  <td>
                    <a href={`#/users/${enc(u.user)}`}>{u.user}</a>
                  </td>
                  <td className="num">
                    {u.connections} connection{u.connections === 1 ? "" : "s"}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          {users.length === 0 ? <p className="muted">No user matches.</p> : null}
        </section>
        {selected ? <UserConnections user={selected} /> : null}
      </div>
    </main>
  );
}

function UserConnections({ user }: { user: string }) {
  const [conns, setConns] = useState<Connection[] | null>(null);
  const [message, setMessage] = useState("");
  const load = (background = false) =>
    api.get<{ connections: Connection[] }>(`/admin/api/users/${enc(user)}`, background).then(
      (r) => setConns(r.connections),
      (e: Error) => setMessage(e.message),
    );
  useEffect(() => {
    setMessage("");
    void load();
    const timer = setInterval(() => void load(true), 3000);
    return () => clearInterval(timer);
  }, [user]);
  const act = async (path: string, what: string) => {
    try {
      const r = await api.post<{ disconnected: number }>(path);
      setMessage(`${what}: ${r.disconnected} connection${r.disconnected === 1 ? "" : "s"} closed (4403)`);
    } catch (e) {
      setMessage(`${what} failed: ${(e as Error).message}`);
    }
    setTimeout(() => void load(), 300);
  };
  const now = Date.now();
  return (
    <section>
      <h2>
        {user}{" "}
        <button className="danger" id="disconnect-all" onClick={() => void act(`/admin/api/users/${enc(user)}/disconnect`, "disconnect all")}>
          Disconnect all (every node)
        </button>
      </h2>
      {message ? (
        <p id="action-result" className="ok">
          {message}
        </p>
      ) : null}
      {conns === null ? (
        <p className="muted">Loading…</p>
      ) : conns.length === 0 ? (
        <p className="muted">No connection on this node.</p>
      ) : (
        <table id="connections">
          <thead>
            <tr>
              <th>client</th>
              <th>transport</th>
              <th>remote</th>
              <th>since</th>
              <th>subscriptions</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {conns.map((c) => (
              <tr key={c.client} data-client={c.client}>
                <td>
                  <code>{c.client}</code>
                </td>
                <td>{c.transport}</td>
                <td>{c.remote ?? "–"}</td>
                <td title={new Date(c.since_ms).toISOString()}>{fmtDuration(now - c.since_ms)} ago</td>
                <td>
                  {c.subscriptions.map((s) => (
                    <div key={s}>
                      <code>{s}</code>
                    </div>
                  ))}
                </td>
                <td>
                  <button className="danger" onClick={() => void act(`/admin/api/connections/${enc(c.client)}/disconnect`, "disconnect")}>
                    Disconnect
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
