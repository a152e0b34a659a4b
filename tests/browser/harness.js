// What the browser suites share (this one and the console's, web/e2e/):
// the binary under test, free loopback ports, and how Debian's Chromium is
// started. Node built-ins only, so either package can import it.

import { createServer } from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

export const binary = process.env.TELEMARK_BIN ?? path.join(root, "target/debug/telemark");

/** A port nothing listens on, on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

/**
 * playwright-core's launch options for Debian's Chromium, headless, with
 * the background networking off: this machine reaches no other host.
 */
export const chromiumLaunch = {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
};
