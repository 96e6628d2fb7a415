// Channels: every channel with subscribers on any node (from the nodes' statistics), and one
// channel's page: descriptor, presence, history, a live tail and a publish form.
import { useEffect, useState, type FormEvent } from "react";
import { useChannel } from "@herald/react";
import type { PresenceClient, PublicationFrom } from "@herald/client";

import { ApiError, api, enc } from "./api.js";
import { type DescriptorView, historyText, scopeText } from "./registry.js";
import { check, type SchemaProblem } from "./schema.js";
import { fmtRate } from "./stats.js";
import { useStats } from "./store.js";

export function Channels() {
  const store = useStats();
  const [q, setQ] = useState("");
  const [open, setOpen] = useState("");
  const all = store.channels();
  const shown = all.filter((c) => c.channel.includes(q.trim()));
  const go = (ev: FormEvent) => {
    ev.preventDefault();
    if (open.trim()) location.hash = `#/channel/${enc(open.trim())}`;
  };
  return (
    <main>
      <section>
        <h2>Active channels</h2>
        <div style={{ display: "flex", gap: 12, flexWrap: "wrap", marginBottom: 10 }}>
          <input id="channel-search" type="search" placeholder="search channels" value={q} onChange={(e) => setQ(e.target.value)} />
          <form onSubmit={go} style={{ display: "flex", gap: 6 }}>
            <input id="channel-open" type="text" placeholder="open a channel by name" value={open} onChange={(e) => setOpen(e.target.value)} />
            <button className="action">Open</button>
          </form>
        </div>
        <table id="channels">
          <thead>
            <tr>
              <th>channel</th>
              <th className="num">subscribers</th>
              <th className="num">publications/s</th>
              <th className="num">nodes</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((c) => (
              <tr key={c.channel}>
                <td>
                  <a href={`#/channel/${enc(c.channel)}`}>
                    <code>{c.channel}</code>
                  </a>
                </td>
                <td className="num">{c.subscribers}</td>
                <td className="num">{fmtRate(c.rate)}</td>
                <td className="num">{c.nodes}</td>
              </tr>
            ))}
          </tbody>
        </table>
        {shown.length === 0 ? <p className="muted">{all.length === 0 ? "No channel has subscribers right now." : "No active channel matches."}</p> : null}
      </section>
    </main>
  );
}

interface ChannelInfo {
  channel: string;
  descriptor: DescriptorView;
  offset: number;
  epoch: string;
  earliest: number;
  subscribers_here: number;
  presence: PresenceClient[] | null;
}

interface Pub {
  offset: number;
  data: unknown;
  from?: PublicationFrom;
}

function fromText(from: PublicationFrom | undefined): string {
  if (!from || "server" in from) return "server";
  return from.user ?? "anonymous";
}

function PubLine({ p }: { p: Pub }) {
  return (
    <li>
      <code>#{p.offset}</code> <span className="muted">from {fromText(p.from)} </span>
      <code>{JSON.stringify(p.data)}</code>
    </li>
  );
}

function History({ name, offset }: { name: string; offset: number }) {
  const [pubs, setPubs] = useState<Pub[]>([]);
  const [earliest, setEarliest] = useState(0);
  const [error, setError] = useState("");
  const load = (before?: number) =>
    api
      .get<{ publications: Pub[]; earliest: number }>(`/admin/api/channels/${enc(name)}/history?limit=20${before ? `&before=${before}` : ""}`)
      .then((r) => {
        setEarliest(r.earliest);
        setPubs((old) => (before ? [...r.publications, ...old] : r.publications));
      }, (e: Error) => setError(e.message));
  useEffect(() => {
    void load();
  }, [name, offset]);
  if (error) return <p className="error">{error}</p>;
  const first = pubs[0]?.offset;
  return (
    <div className="tail" id="history">
      <p className="muted">newest first</p>
      <ul>
        {[...pubs].reverse().map((p) => (
          <PubLine key={p.offset} p={p} />
        ))}
      </ul>
      {pubs.length === 0 ? <p className="muted">History is empty.</p> : null}
      {first !== undefined && first > earliest ? (
        <button className="link" onClick={() => void load(first)}>
          older…
        </button>
      ) : null}
    </div>
  );
}

function Tail({ name }: { name: string }) {
  const [pubs, setPubs] = useState<Pub[]>([]);
  const [state, setState] = useState("subscribing");
  useChannel(
    name,
    (data, pub) => setPubs((old) => [{ offset: pub.offset, data, from: pub.from }, ...old].slice(0, 100)),
    { onSubscribed: () => setState("live"), onError: (e) => setState(`refused: ${e.message}`) },
  );
  return (
    <div className="tail" id="tail">
      <p className="muted" id="tail-state">
        {state}
      </p>
      <ul>
        {pubs.map((p) => (
          <PubLine key={p.offset} p={p} />
        ))}
      </ul>
    </div>
  );
}

function PublishForm({ name, schema }: { name: string; schema: unknown }) {
  const [text, setText] = useState("{}");
  const [problem, setProblem] = useState<SchemaProblem | null>(null);
  const [result, setResult] = useState("");
  const send = async (ev: FormEvent) => {
    ev.preventDefault();
    setResult("");
    const p = check(schema, text);
    setProblem(p);
    if (p) return;
    try {
      const r = await api.post<{ offset: number }>(`/admin/api/channels/${enc(name)}/publish`, { data: JSON.parse(text) as unknown });
      setResult(`published at offset ${r.offset}`);
    } catch (e) {
      if (e instanceof ApiError && e.body.pointer !== undefined) setProblem({ pointer: e.body.pointer, message: e.body.message });
      else setResult(`refused: ${(e as Error).message}`);
    }
  };
  return (
    <form onSubmit={send} id="publish">
      <textarea id="publish-data" value={text} onChange={(e) => (setText(e.target.value), setProblem(null))} spellCheck={false} />
      <div style={{ display: "flex", gap: 10, alignItems: "center", marginTop: 6 }}>
        <button className="action" id="publish-send">
          Validate and publish
        </button>
        {problem ? (
          <span className="error" id="publish-problem">
            schema error at <code id="publish-pointer">{problem.pointer === "" ? "(the whole payload)" : problem.pointer}</code>: {problem.message}
          </span>
        ) : null}
        {result ? (
          <span className="ok" id="publish-result">
            {result}
          </span>
        ) : null}
      </div>
    </form>
  );
}

export function ChannelPage({ name }: { name: string }) {
  const [info, setInfo] = useState<ChannelInfo | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    setInfo(null);
    setError("");
    const load = (background: boolean) => api.get<ChannelInfo>(`/admin/api/channels/${enc(name)}`, background).then(setInfo, (e: Error) => setError(e.message));
    void load(false);
    // Presence and position change by themselves: refresh them (not counted as use).
    const timer = setInterval(() => void load(true), 5000);
    return () => clearInterval(timer);
  }, [name]);
  if (error) return <main className="error">{error}</main>;
  if (!info) return <main className="muted">Loading…</main>;
  const d = info.descriptor;
  return (
    <main>
      <section>
        <h2>
          <code id="channel-name">{info.channel}</code> <span className="muted">descriptor {d.name}</span>
        </h2>
        <table>
          <tbody>
            <tr>
              <th>subscribe</th>
              <td>{scopeText(d.scope)}</td>
              <th>publish (clients)</th>
              <td>{scopeText(d.publish)}</td>
              <th>history</th>
              <td>{historyText(d.history)}</td>
            </tr>
            <tr>
              <th>presence</th>
              <td>{d.presence ? "yes" : "no"}</td>
              <th>position</th>
              <td>
                offset {info.offset} <span className="muted">epoch {info.epoch}</span>
              </td>
              <th>subscribers (this node)</th>
              <td>{info.subscribers_here}</td>
            </tr>
          </tbody>
        </table>
      </section>
      <div className="grid">
        <section>
          <h2>Live tail</h2>
          <Tail name={info.channel} />
        </section>
        <section>
          <h2>History</h2>
          {d.history ? <History name={info.channel} offset={info.offset} /> : <p className="muted">This channel keeps no history.</p>}
        </section>
      </div>
      <div className="grid">
        <section>
          <h2>Publish</h2>
          <PublishForm name={info.channel} schema={d.schema} />
          <h3>Schema</h3>
          <pre>{JSON.stringify(d.schema, null, 2)}</pre>
        </section>
        <section>
          <h2>Presence</h2>
          {info.presence === null ? (
            <p className="muted">Presence is off for this channel.</p>
          ) : info.presence.length === 0 ? (
            <p className="muted">Nobody is present.</p>
          ) : (
            <table id="presence">
              <tbody>
                {info.presence.map((p) => (
                  <tr key={p.client}>
                    <td>{p.user ?? "anonymous"}</td>
                    <td>
                      <code>{p.client}</code>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </section>
      </div>
    </main>
  );
}
