import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

// The server serves the build at /ui (src/helixflow/api/ui.py); the output ships inside the
// Python package and is never committed. `npm run dev` proxies the API to a local server.
const backend = process.env.HELIXFLOW_URL ?? "http://127.0.0.1:8080";

export default defineConfig({
  base: "/ui/",
  build: {
    outDir: fileURLToPath(new URL("../src/helixflow/api/ui/static", import.meta.url)),
    emptyOutDir: true,
    target: "es2022",
    // Hashed file names under assets/: the server caches them for a year.
    assetsDir: "assets",
    // No data: URIs for scripts or styles; everything is a same-origin file (CSP 'self').
    assetsInlineLimit: 0,
    sourcemap: false,
    reportCompressedSize: false,
  },
  server: {
    proxy: {
      "/api": backend,
      "/v1": backend,
      "/health": backend,
      "/ready": backend,
    },
  },
});
