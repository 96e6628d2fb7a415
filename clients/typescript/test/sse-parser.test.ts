// The SSE wire parser on its own (pure; the transport itself is tested against the gateway in
// client.test.ts and browser.test.ts): line endings, chunk boundaries, multi-line data, comments.
import { describe, expect, it } from "vitest";
import { SseParser, type SseEvent } from "@herald/client";

function parse(chunks: string[]): { events: SseEvent[]; comments: string[] } {
  const events: SseEvent[] = [];
  const comments: string[] = [];
  const p = new SseParser((e) => events.push(e), (c) => comments.push(c));
  for (const c of chunks) p.push(c);
  return { events, comments };
}

describe("SseParser", () => {
  it("reads event, id and data, and skips retry and comments", () => {
    const { events, comments } = parse(['retry: 2000\n\n: ping\n\nevent: pub\nid: c1\ndata: {"type":"pub","offset":1}\n\n']);
    expect(events).toEqual([{ event: "pub", id: "c1", data: '{"type":"pub","offset":1}' }]);
    expect(comments).toEqual(["ping"]);
  });

  it("joins data lines with \\n and handles CRLF, CR and chunk boundaries anywhere", () => {
    const text = 'event: welcome\r\ndata: {"a":\r\ndata: 1}\r\n\r\nevent: pub\rdata:{"b":2}\r\r';
    const expected = [
      { event: "welcome", id: undefined, data: '{"a":\n1}' },
      { event: "pub", id: undefined, data: '{"b":2}' },
    ];
    expect(parse([text]).events).toEqual(expected);
    for (let cut = 1; cut < text.length; cut++) {
      expect(parse([text.slice(0, cut), text.slice(cut)]).events, `cut at ${cut}`).toEqual(expected);
    }
    expect(parse([...text]).events).toEqual(expected); // one character at a time
  });

  it("ignores an event without data and drops only one leading space", () => {
    const { events } = parse(["\uFEFFevent: nothing\n\ndata:  two spaces\n\n"]);
    expect(events).toEqual([{ event: "message", id: undefined, data: " two spaces" }]);
  });
});
