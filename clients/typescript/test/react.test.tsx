// @vitest-environment jsdom
// @herald/react hooks against the real gateway (through a cuttable proxy).
import { afterEach, describe, expect, it } from "vitest";
import { cleanup as unmountAll, render, screen, waitFor } from "@testing-library/react";
import { QueryClient, QueryClientProvider, useQuery } from "@tanstack/react-query";
import WS from "ws";
import { Herald, type WebSocketConstructor } from "@herald/client";
import {
  HeraldProvider,
  realtimeRefetchInterval,
  useChannel,
  useInvalidateOnEvent,
  useRealtimeConnected,
  useRealtimeRefetchInterval,
} from "@herald/react";

import { Gateway, sleep, until } from "./helpers/gateway.js";
import { CuttableProxy } from "./helpers/proxy.js";

// Events arrive from the socket, outside React's act(); the tests wait with waitFor instead.
(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = false;

const WebSocket = WS as unknown as WebSocketConstructor;
const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  unmountAll();
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function setup() {
  const gw = await Gateway.start();
  cleanup.push(() => gw.kill());
  const proxy = await CuttableProxy.start(gw.port);
  cleanup.push(() => proxy.close());
  const herald = new Herald(proxy.ws, {
    WebSocket,
    getToken: () => gw.token("alice"),
    minReconnectDelayMs: 50,
    maxReconnectDelayMs: 200,
  });
  cleanup.push(() => herald.disconnect());
  const queryClient = new QueryClient({ defaultOptions: { queries: { retry: false } } });
  cleanup.push(() => queryClient.clear());
  const wrap = (ui: React.ReactNode) =>
    render(
      <QueryClientProvider client={queryClient}>
        <HeraldProvider client={herald}>{ui}</HeraldProvider>
      </QueryClientProvider>,
    );
  return { gw, proxy, herald, queryClient, wrap };
}

function Status() {
  const connected = useRealtimeConnected();
  const interval = useRealtimeRefetchInterval(250);
  return (
    <p>
      <span data-testid="connected">{String(connected)}</span>
      <span data-testid="interval">{String(interval)}</span>
    </p>
  );
}

describe("@herald/react against the gateway", () => {
  it("useRealtimeConnected and the refetch interval flip with the connection", async () => {
    const { proxy, herald, wrap } = await setup();
    const fn = realtimeRefetchInterval(250);
    expect(fn()).toBe(250); // no provider yet: not connected
    wrap(<Status />);
    await waitFor(() => expect(screen.getByTestId("connected").textContent).toBe("true"));
    expect(screen.getByTestId("interval").textContent).toBe("false");
    expect(fn()).toBe(false);
    expect(realtimeRefetchInterval(250, herald)()).toBe(false);

    proxy.cut();
    await waitFor(() => expect(screen.getByTestId("connected").textContent).toBe("false"));
    expect(screen.getByTestId("interval").textContent).toBe("250");
    expect(fn()).toBe(250);

    proxy.unblock();
    await waitFor(() => expect(screen.getByTestId("connected").textContent).toBe("true"), { timeout: 5_000 });
    expect(fn()).toBe(false);
  });

  it("a query with realtimeRefetchInterval polls only while disconnected", async () => {
    const { proxy, herald, wrap } = await setup();
    let fetches = 0;
    function Poller() {
      const q = useQuery({
        queryKey: ["poll"],
        queryFn: () => ++fetches,
        refetchInterval: realtimeRefetchInterval(100),
      });
      return <span data-testid="poll">{q.data ?? 0}</span>;
    }
    wrap(<Poller />);
    await until(() => herald.connected);
    await sleep(300);
    const whileConnected = fetches;
    await sleep(600);
    expect(fetches).toBe(whileConnected); // no polling while events keep the data fresh

    proxy.cut();
    await until(() => !herald.connected);
    await sleep(700);
    expect(fetches - whileConnected).toBeGreaterThanOrEqual(3); // polling fallback

    proxy.unblock();
    await until(() => herald.connected, 5_000);
    await sleep(150);
    const afterReconnect = fetches;
    await sleep(600);
    expect(fetches).toBe(afterReconnect);
  });

  it("an event invalidates only the named query key", async () => {
    const { gw, herald, wrap } = await setup();
    const fetches: Record<string, number> = {};
    const received: string[] = [];
    function Article({ id }: { id: string }) {
      const q = useQuery({
        queryKey: ["article", id],
        queryFn: () => (fetches[`article/${id}`] = (fetches[`article/${id}`] ?? 0) + 1),
        staleTime: Infinity,
      });
      return <span data-testid={`article-${id}`}>{q.data ?? 0}</span>;
    }
    function Articles() {
      const q = useQuery({
        queryKey: ["articles"],
        queryFn: () => (fetches["articles"] = (fetches["articles"] ?? 0) + 1),
        staleTime: Infinity,
      });
      return <span data-testid="articles">{q.data ?? 0}</span>;
    }
    function Live() {
      useInvalidateOnEvent("blog.article.feed", (e) => ["article", (e as { id: string }).id]);
      useChannel("blog.article.feed", (e) => received.push((e as { id: string }).id));
      return null;
    }
    wrap(
      <>
        <Article id="1" />
        <Article id="2" />
        <Articles />
        <Live />
      </>,
    );
    await until(() => herald.connected);
    await waitFor(() => expect(fetches).toEqual({ "article/1": 1, "article/2": 1, articles: 1 }));
    await sleep(200); // both subscriptions are in place

    await gw.publish("blog.article.feed", { id: "1", title: "edited" });
    await waitFor(() => expect(screen.getByTestId("article-1").textContent).toBe("2"));
    await sleep(300);
    expect(fetches).toEqual({ "article/1": 2, "article/2": 1, articles: 1 });
    expect(received).toEqual(["1"]);

    await gw.publish("blog.article.feed", { id: "2", title: "edited" });
    await waitFor(() => expect(screen.getByTestId("article-2").textContent).toBe("2"));
    await sleep(300);
    expect(fetches).toEqual({ "article/1": 2, "article/2": 2, articles: 1 });
  });
});
