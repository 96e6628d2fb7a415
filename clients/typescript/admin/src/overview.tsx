// The overview: every node (through the broker, so every node's dashboard lists them all),
// cluster totals, charts of the last minutes, refusals and readiness.
import { useMemo } from "react";
import type uPlot from "uplot";

import { TimeChart } from "./chart.js";
import { type NodeView, STALE_MS, fmtBytes, fmtDuration, fmtRate } from "./stats.js";
import { useStats } from "./store.js";

function Stat({ id, label, value }: { id: string; label: string; value: string | number }) {
  return (
    <div className="stat" id={id}>
      <b>{value}</b>
      <span>{label}</span>
    </div>
  );
}

export function Overview() {
  const store = useStats();
  const nodes = store.nodeList();
  const points = store.series();
  const now = Date.now();
  const live = nodes.filter((n) => now - n.seenAt <= STALE_MS);
  const sum = (f: (n: NodeView) => number) => live.reduce((a, n) => a + f(n), 0);
  const transports = new Map<string, number>();
  const rejects = new Map<string, { gate: string; code: string; count: number }>();
  for (const n of live) {
    for (const [t, c] of n.latest.transports) transports.set(t, (transports.get(t) ?? 0) + c);
    for (const [gate, code, count] of n.latest.rejects) {
      const key = `${gate}/${code}`;
      const e = rejects.get(key) ?? { gate, code, count: 0 };
      e.count += count;
      rejects.set(key, e);
    }
  }
  const t = points.map((p) => p.t);
  const connData = useMemo<uPlot.AlignedData>(() => [t, points.map((p) => p.connections), points.map((p) => p.subscriptions)], [points.length, t[t.length - 1]]);
  const rateData = useMemo<uPlot.AlignedData>(() => [t, points.map((p) => p.pubRate), points.map((p) => p.delRate)], [points.length, t[t.length - 1]]);

  return (
    <main>
      <section>
        <h2>Cluster now</h2>
        <div className="stats">
          <Stat id="stat-nodes" label="nodes" value={live.length} />
          <Stat id="stat-connections" label="connections" value={sum((n) => n.latest.connections)} />
          <Stat id="stat-subscriptions" label="subscriptions" value={sum((n) => n.latest.subscriptions)} />
          <Stat id="stat-publications" label="publications/s" value={fmtRate(sum((n) => n.pubRate))} />
          <Stat id="stat-deliveries" label="deliveries/s" value={fmtRate(sum((n) => n.delRate))} />
          <Stat id="stat-published-total" label="publications (total)" value={sum((n) => n.latest.publications)} />
          <Stat id="stat-slow" label="slow-consumer cut-offs" value={sum((n) => n.latest.slow_consumers)} />
        </div>
      </section>
      <div className="grid">
        <section>
          <TimeChart
            title="Connections and subscriptions"
            series={[
              { label: "connections", stroke: "#2b6cb0" },
              { label: "subscriptions", stroke: "#805ad5" },
            ]}
            data={connData}
          />
        </section>
        <section>
          <TimeChart
            title="Publications/s and deliveries/s"
            series={[
              { label: "publications/s", stroke: "#dd6b20" },
              { label: "deliveries/s", stroke: "#1f9d55" },
            ]}
            data={rateData}
          />
        </section>
      </div>
      <section>
        <h2>Nodes</h2>
        <table id="nodes">
          <thead>
            <tr>
              <th>node</th>
              <th>version</th>
              <th>uptime</th>
              <th className="num">connections</th>
              <th>by transport</th>
              <th className="num">subscriptions</th>
              <th className="num">pub/s</th>
              <th className="num">deliveries/s</th>
              <th className="num">memory</th>
              <th>broker</th>
              <th>sources</th>
            </tr>
          </thead>
          <tbody>
            {nodes.map((n) => {
              const s = n.latest;
              const stale = now - n.seenAt > STALE_MS;
              return (
                <tr key={s.node} data-node={s.node}>
                  <td>
                    <code>{s.node}</code> {stale ? <span className="badge stale">silent</span> : s.draining ? <span className="badge connecting">draining</span> : null}
                  </td>
                  <td>{s.version}</td>
                  <td>{fmtDuration(s.at_ms - s.started_ms)}</td>
                  <td className="num node-connections">{s.connections}</td>
                  <td>{s.transports.filter(([, c]) => c > 0).map(([t, c]) => `${t} ${c}`).join(", ") || "–"}</td>
                  <td className="num">{s.subscriptions}</td>
                  <td className="num">{fmtRate(n.pubRate)}</td>
                  <td className="num">{fmtRate(n.delRate)}</td>
                  <td className="num">{fmtBytes(s.rss_bytes)}</td>
                  <td>
                    {s.broker} <span className={`badge ${s.broker_error ? "down" : "ok"}`} title={s.broker_error ?? ""}>{s.broker_error ? "down" : "ready"}</span>
                  </td>
                  <td>
                    {s.sources.length === 0
                      ? "–"
                      : s.sources.map(([name, up]) => (
                          <span key={name} className={`badge ${up ? "ok" : "down"}`} title={name}>
                            {name}
                          </span>
                        ))}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
        {nodes.length === 0 ? <p className="muted">Waiting for the first statistics on $admin:nodes…</p> : null}
      </section>
      <div className="grid">
        <section>
          <h2>Connections by transport</h2>
          <table id="transports">
            <tbody>
              {[...transports].map(([t, c]) => (
                <tr key={t}>
                  <td>{t}</td>
                  <td className="num">{c}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </section>
        <section>
          <h2>Refusals by gate and code</h2>
          {rejects.size === 0 ? (
            <p className="muted">None since the nodes started.</p>
          ) : (
            <table id="rejects">
              <thead>
                <tr>
                  <th>gate</th>
                  <th>code</th>
                  <th className="num">count</th>
                </tr>
              </thead>
              <tbody>
                {[...rejects.values()]
                  .sort((a, b) => b.count - a.count)
                  .map((r) => (
                    <tr key={`${r.gate}/${r.code}`}>
                      <td>{r.gate}</td>
                      <td>
                        <code>{r.code}</code>
                      </td>
                      <td className="num">{r.count}</td>
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
