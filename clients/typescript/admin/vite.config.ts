// Builds the admin dashboard into the gateway's assets; `herald serve` embeds them
// (include_str!, crates/herald-server/src/admin/mod.rs), so it needs no Node at run time.
// Fixed file names keep the embedding simple: app.js, app.css, index.html.
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const root = fileURLToPath(new URL(".", import.meta.url));

export default defineConfig({
  root,
  base: "/admin/",
  esbuild: { jsx: "automatic" },
  logLevel: "warn",
  build: {
    outDir: fileURLToPath(new URL("../../../crates/herald-server/assets/admin", import.meta.url)),
    emptyOutDir: true,
    modulePreload: false,
    sourcemap: false,
    target: "es2022",
    cssCodeSplit: false,
    rollupOptions: {
      // TanStack Query's "use client" directives mean nothing in a client-only bundle.
      onwarn(warning, warn) {
        if (warning.code !== "MODULE_LEVEL_DIRECTIVE") warn(warning);
      },
      output: {
        entryFileNames: "app.js",
        chunkFileNames: "app-[name].js",
        assetFileNames: (info) => (info.names?.some((n) => n.endsWith(".css")) ? "app.css" : "[name][extname]"),
        inlineDynamicImports: true,
      },
    },
  },
});
