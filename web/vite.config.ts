import { defineConfig } from "vite";

// `npm run dev` serves the console with hot reload and sends the API to a
// `telemark serve` on 127.0.0.1:8080.
export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  resolve: {
    alias: { react: "preact/compat", "react-dom": "preact/compat" },
  },
  build: { target: "es2022", sourcemap: false, chunkSizeWarningLimit: 600 },
  server: {
    proxy: { "/api": { target: "http://127.0.0.1:8080", ws: true } },
  },
});
