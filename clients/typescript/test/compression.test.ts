// permessage-deflate (RFC 7692) on `/v1/ws`, end to end: the real `ws` client from npm (the
// same extension code Node servers and clients use) against the real binary with
// `[websocket] permessage_deflate = true`. Shows that the extension is negotiated per connection
// (a client that does not offer it gets plain frames from the same publication), that
// compressed broadcasts arrive intact and smaller on the wire, that the client's own compressed
// commands are inflated by the gateway, and that the gateway answers with no context takeover
// (docs/operations.md "Compression (permessage-deflate)").
import { afterEach, describe, expect, it } from "vitest";
import WS from "ws";

import { Gateway, until } from "./helpers/gateway.js";

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

interface Tapped {
  ws: WS;
  frames: Record<string, unknown>[];
  /** Bytes read from the TCP socket so far (frames as they were on the wire). */
  wire: () => number;
  /** The 101 answer's `Sec-WebSocket-Extensions` (ws's `extensions` lists only names). */
  agreed: string;
}

async function connect(gw: Gateway, user: string, perMessageDeflate: boolean | object): Promise<Tapped> {
  const ws = new WS(`${gw.ws}?token=${gw.token(user)}`, { perMessageDeflate });
  cleanup.push(() => ws.terminate());
  const frames: Record<string, unknown>[] = [];
  let agreed = "";
  ws.once("upgrade", (res) => (agreed = String(res.headers["sec-websocket-extensions"] ?? "")));
  ws.on("message", (data) => frames.push(JSON.parse(data.toString()) as Record<string, unknown>));
  await new Promise<void>((ok, fail) => {
    ws.once("open", () => ok());
    ws.once("error", fail);
  });
  await until(() => frames.some((f) => f.type === "welcome"), 5_000, "welcome");
  // `_socket` is ws's net.Socket: its bytesRead counts what crossed the wire, compressed or not.
  const socket = (ws as unknown as { _socket: { bytesRead: number } })._socket;
  return { ws, frames, wire: () => socket.bytesRead, agreed };
}

async function gateway(): Promise<Gateway> {
  const gw = await Gateway.start({ sections: "[websocket]\npermessage_deflate = true\ndeflate_min_bytes = 64" });
  cleanup.push(() => gw.kill());
  return gw;
}

describe("permessage-deflate on /v1/ws", () => {
  it("is negotiated without context takeover, per connection, and a broadcast arrives intact and smaller", async () => {
    const gw = await gateway();
    const zipped = await connect(gw, "alice", true);
    const plain = await connect(gw, "bob", false);
    expect(zipped.ws.extensions).toBe("permessage-deflate");
    expect(zipped.agreed).toContain("permessage-deflate");
    expect(zipped.agreed).toContain("server_no_context_takeover");
    expect(zipped.agreed).toContain("client_no_context_takeover");
    expect(plain.ws.extensions).toBe("");
    expect(plain.agreed).toBe("");

    for (const t of [zipped, plain]) {
      t.ws.send(JSON.stringify({ type: "subscribe", id: 1, channel: "blog.article.feed" }));
      await until(() => t.frames.some((f) => f.id === 1), 5_000, "the subscribe reply");
      expect(t.frames.find((f) => f.id === 1)?.ok).toBe(true);
    }
    const title = "Compression that is paid once. ".repeat(60); // ~1.9 KB, very compressible
    const before = { zipped: zipped.wire(), plain: plain.wire() };
    for (let i = 0; i < 5; i++) await gw.publish("blog.article.feed", { id: `a${i}`, title });
    for (const t of [zipped, plain]) {
      await until(() => t.frames.filter((f) => f.type === "pub").length === 5, 5_000, "5 publications");
      const pubs = t.frames.filter((f) => f.type === "pub");
      expect(pubs.map((f) => (f.data as { id: string }).id)).toEqual(["a0", "a1", "a2", "a3", "a4"]);
      for (const p of pubs) expect((p.data as { title: string }).title).toBe(title);
    }
    const zippedBytes = zipped.wire() - before.zipped;
    const plainBytes = plain.wire() - before.plain;
    expect(plainBytes).toBeGreaterThan(5 * title.length);
    // Without a shared window each frame still shrinks to a fraction of its text.
    expect(zippedBytes).toBeLessThan(plainBytes / 4);
  });

  it("inflates the client's compressed commands, and other connections are served meanwhile", async () => {
    const gw = await gateway();
    // threshold 0: ws compresses every message it sends, even the short subscribe.
    const writer = await connect(gw, "carol", { threshold: 0 });
    const reader = await connect(gw, "dave", false);
    for (const t of [writer, reader]) {
      t.ws.send(JSON.stringify({ type: "subscribe", id: 1, channel: "chat.room.7" }));
      await until(() => t.frames.some((f) => f.id === 1), 5_000, "the subscribe reply");
      expect(t.frames.find((f) => f.id === 1)?.ok).toBe(true);
    }
    const text = "hello over a compressed frame ".repeat(30);
    writer.ws.send(JSON.stringify({ type: "publish", id: 2, channel: "chat.room.7", data: { text } }));
    await until(() => reader.frames.some((f) => f.type === "pub"), 5_000, "the publication");
    expect((reader.frames.find((f) => f.type === "pub")?.data as { text: string }).text).toBe(text);
    await until(() => writer.frames.some((f) => f.id === 2), 5_000, "the publish answer");
    expect(writer.frames.find((f) => f.id === 2)?.ok).toBe(true);
  });

  it("is refused to nobody when off: a client offering it gets plain frames", async () => {
    const gw = await Gateway.start();
    cleanup.push(() => gw.kill());
    const t = await connect(gw, "erin", true);
    expect(t.ws.extensions).toBe("");
    expect(t.agreed).toBe("");
    t.ws.send(JSON.stringify({ type: "subscribe", id: 1, channel: "blog.article.feed" }));
    await until(() => t.frames.some((f) => f.id === 1), 5_000, "the subscribe reply");
    await gw.publish("blog.article.feed", { id: "x", title: "plain" });
    await until(() => t.frames.some((f) => f.type === "pub"), 5_000, "the publication");
  });
});
