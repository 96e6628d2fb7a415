// The test harness itself (issue 11): it finds the herald binary the way cargo does, and when
// it cannot start it, it says why (the path tried, the exit code, the last lines of output).
import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

import { locateHerald, repoRoot, startHerald } from "./helpers/gateway.js";

describe("test harness", () => {
  it("takes TEST_HERALD_BIN, then HERALD_BIN, then cargo metadata's target directory", () => {
    expect(locateHerald({ ...process.env, TEST_HERALD_BIN: "/opt/a/herald", HERALD_BIN: "/opt/b/herald" })).toMatchObject({
      path: "/opt/a/herald",
      from: "$TEST_HERALD_BIN",
    });
    const env = { ...process.env };
    delete env["TEST_HERALD_BIN"];
    expect(locateHerald({ ...env, HERALD_BIN: "/opt/b/herald" })).toMatchObject({ path: "/opt/b/herald", from: "$HERALD_BIN" });
    // A shared build cache: cargo puts the binary under CARGO_TARGET_DIR, and so does the helper.
    const shared = mkdtempSync(join(tmpdir(), "herald-target-"));
    const bare = { ...env };
    delete bare["HERALD_BIN"]; // scripts/test.sh sets it for the run; this case is without it
    const found = locateHerald({ ...bare, CARGO_TARGET_DIR: shared }, repoRoot);
    expect(found.path).toBe(join(shared, "debug", "herald"));
    expect(found.from).toContain("cargo metadata");
  });

  it("names the path and how it was found when there is no binary", async () => {
    const err = await startHerald({ path: "/nonexistent/herald", from: "$TEST_HERALD_BIN" }, ["serve"]).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toContain("/nonexistent/herald");
    expect((err as Error).message).toContain("$TEST_HERALD_BIN");
    expect((err as Error).message).toMatch(/ENOENT/);
  });

  it("gives the exit code and the last lines of output when the binary fails", async () => {
    const dir = mkdtempSync(join(tmpdir(), "herald-fake-"));
    const script = join(dir, "herald");
    writeFileSync(script, "#!/bin/sh\necho 'starting' \nfor i in $(seq 1 40); do echo \"noise $i\" >&2; done\necho 'error: herald.toml: [server] listen: invalid socket address' >&2\nexit 3\n");
    chmodSync(script, 0o755);
    const err = (await startHerald({ path: script, from: "a test" }, ["serve"]).catch((e: Error) => e)) as Error;
    expect(err.message).toContain(script);
    expect(err.message).toContain("exit code 3");
    expect(err.message).toContain("invalid socket address");
    expect(err.message).not.toContain("noise 5\n"); // only the last lines
  });
});
