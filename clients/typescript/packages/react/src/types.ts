// Types shared by the React bindings' files (kept apart so that no two files import each other).
import type { Herald } from "@herald/client";

/** A client of any channel map (the hooks narrow it again with their type parameter). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyHerald = Herald<any>;
