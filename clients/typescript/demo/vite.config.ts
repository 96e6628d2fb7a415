// Builds the demo page into the gateway's assets; `herald serve` embeds them (include_str!), so
// it needs no Node at run time. Fixed file names keep the embedding simple.
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const root = fileURLToPath(new URL(".", import.meta.url));

export default defineConfig({
  root,
  base: "/demo/",
  esbuild: { jsx: "automatic" },
  logLevel: "warn",
  build: {
    outDir: fileURLToPath(new URL("../../../crates/herald-server/assets/demo", import.meta.url)),
    emptyOutDir: true,
    modulePreload: false,
    sourcemap: false,
    target: "es2022",
    rollupOptions: {
      // TanStack Query's "use client" directives mean nothing in a client-only bundle.
      onwarn(warning, warn) {
        if (warning.code !== "MODULE_LEVEL_DIRECTIVE") warn(warning);
      },
      output: {
        entryFileNames: "app.js",
        chunkFileNames: "app-[name].js",
        assetFileNames: "[name][extname]",
        inlineDynamicImports: true,
      },
    },
  },
});
