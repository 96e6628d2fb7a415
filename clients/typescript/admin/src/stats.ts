// What the overview and channel list show: every node's snapshots from `$admin:nodes`
// (crates/herald-node/src/admin.rs), kept for the last minutes, with rates computed from two
// snapshots of the same node's cumulative counters.

/** One node's snapshot as published on `$admin:nodes`. */
export interface Snapshot {
  node: string;
  version: string;
  started_ms: number;
  at_ms: number;
  connections: number;
  transports: [string, number][];
  subscriptions: number;
  publications: number;
  deliveries: number;
  slow_consumers: number;
  rejects: [string, string, number][];
  rss_bytes: number | null;
  broker: string;
  broker_error: string | null;
  sources: [string, boolean][];
  draining: boolean;
  channels: { channel: string; subscribers: number; publications: number }[];
  channels_total: number;
}

/** A node as the page knows it: its latest snapshot and rates since the one before. */
export interface NodeView {
  latest: Snapshot;
  /** Publications/s accepted by the node. */
  pubRate: number;
  /** Deliveries/s queued to its subscribers. */
  delRate: number;
  /** Per channel: publications/s fanned out on this node. */
  channelRates: Map<string, number>;
  /** When the page received the latest snapshot (local clock). */
  seenAt: number;
}

/** One point of the charts: the whole cluster at one moment. */
export interface Point {
  t: number;
  connections: number;
  subscriptions: number;
  pubRate: number;
  delRate: number;
}

/** How long the charts look back. */
export const WINDOW_MS = 5 * 60_000;
/** A node silent for this long is shown as stale; for three times this, it is dropped. */
export const STALE_MS = 5_000;

function rate(now: number, before: number, ms: number): number {
  return ms > 0 ? Math.max(0, ((now - before) * 1000) / ms) : 0;
}

export class StatsStore {
  private nodes = new Map<string, NodeView>();
  private points: Point[] = [];
  private listeners = new Set<() => void>();
  private version = 0;
  private timer: ReturnType<typeof setInterval> | undefined;

  /** Takes one snapshot from `$admin:nodes`. */
  add(s: Snapshot): void {
    const prev = this.nodes.get(s.node)?.latest;
    const ms = prev ? s.at_ms - prev.at_ms : 0;
    const channelRates = new Map<string, number>();
    if (prev) {
      const before = new Map(prev.channels.map((c) => [c.channel, c.publications]));
      for (const c of s.channels) {
        const b = before.get(c.channel);
        if (b !== undefined) channelRates.set(c.channel, rate(c.publications, b, ms));
      }
    }
    this.nodes.set(s.node, {
      latest: s,
      pubRate: prev ? rate(s.publications, prev.publications, ms) : 0,
      delRate: prev ? rate(s.deliveries, prev.deliveries, ms) : 0,
      channelRates,
      seenAt: Date.now(),
    });
    this.changed();
  }

  /** Drops silent nodes and records a chart point every second while someone listens. */
  private tick(): void {
    const now = Date.now();
    for (const [id, n] of this.nodes) if (now - n.seenAt > 3 * STALE_MS) this.nodes.delete(id);
    const live = [...this.nodes.values()].filter((n) => now - n.seenAt <= STALE_MS);
    if (live.length > 0) {
      this.points.push({
        t: now / 1000,
        connections: live.reduce((a, n) => a + n.latest.connections, 0),
        subscriptions: live.reduce((a, n) => a + n.latest.subscriptions, 0),
        pubRate: live.reduce((a, n) => a + n.pubRate, 0),
        delRate: live.reduce((a, n) => a + n.delRate, 0),
      });
      while (this.points.length > 0 && now / 1000 - this.points[0]!.t > WINDOW_MS / 1000) this.points.shift();
    }
    this.changed();
  }

  private changed(): void {
    this.version++;
    for (const l of this.listeners) l();
  }

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    if (!this.timer) this.timer = setInterval(() => this.tick(), 1000);
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0) {
        clearInterval(this.timer);
        this.timer = undefined;
      }
    };
  };

  getVersion = (): number => this.version;

  nodeList(): NodeView[] {
    return [...this.nodes.values()].sort((a, b) => a.latest.node.localeCompare(b.latest.node));
  }

  series(): Point[] {
    return this.points;
  }

  /** Every channel any node reported: subscribers summed over nodes, rate the highest any node saw (each node fans out the same publications). */
  channels(): { channel: string; subscribers: number; rate: number; nodes: number }[] {
    const out = new Map<string, { channel: string; subscribers: number; rate: number; nodes: number }>();
    for (const n of this.nodes.values()) {
      for (const c of n.latest.channels) {
        const e = out.get(c.channel) ?? { channel: c.channel, subscribers: 0, rate: 0, nodes: 0 };
        e.subscribers += c.subscribers;
        e.nodes += 1;
        e.rate = Math.max(e.rate, n.channelRates.get(c.channel) ?? 0);
        out.set(c.channel, e);
      }
    }
    return [...out.values()].sort((a, b) => b.subscribers - a.subscribers || a.channel.localeCompare(b.channel));
  }
}

export function fmtBytes(n: number | null): string {
  if (n === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function fmtDuration(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

export function fmtRate(r: number): string {
  return r >= 100 ? r.toFixed(0) : r.toFixed(1);
}
