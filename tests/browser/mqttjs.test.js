// MQTT.js in headless Chromium talks to `telemark broker` over WebSocket
// (ws://127.0.0.1:PORT/mqtt), as a newcomer's browser page would.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { chromium } from "playwright-core";
import { binary, chromiumLaunch, freePort } from "./harness.js";

const here = path.dirname(fileURLToPath(import.meta.url));

async function waitForPort(port) {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const ok = await new Promise((resolve) => {
      const s = connect(port, "127.0.0.1", () => {
        s.end();
        resolve(true);
      });
      s.on("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on 127.0.0.1:${port}`);
}

let broker, web, browser, tcpPort, wsPort, pageUrl;

before(async () => {
  tcpPort = await freePort();
  wsPort = await freePort();
  broker = spawn(binary, ["broker", "--tcp", `127.0.0.1:${tcpPort}`, "--ws", `127.0.0.1:${wsPort}`], {
    stdio: "ignore",
    env: { ...process.env, RUST_LOG: "warn" },
  });
  await waitForPort(tcpPort);
  await waitForPort(wsPort);
  const mqttBundle = readFileSync(path.join(here, "node_modules/mqtt/dist/mqtt.min.js"));
  web = createServer((req, res) => {
    if (req.url === "/mqtt.min.js") {
      res.writeHead(200, { "content-type": "text/javascript" });
      res.end(mqttBundle);
    } else {
      res.writeHead(200, { "content-type": "text/html" });
      res.end('<!doctype html><title>telemark</title><script src="/mqtt.min.js"></script>');
    }
  });
  await new Promise((r) => web.listen(0, "127.0.0.1", r));
  pageUrl = `http://127.0.0.1:${web.address().port}/`;
  browser = await chromium.launch(chromiumLaunch);
});

after(async () => {
  await browser?.close();
  web?.close();
  broker?.kill("SIGTERM");
});

for (const protocolVersion of [4, 5]) {
  test(`MQTT.js (protocol level ${protocolVersion}) publishes and subscribes from the browser`, async () => {
    const page = await browser.newPage();
    await page.goto(pageUrl);
    const result = await page.evaluate(
      ({ url, protocolVersion }) =>
        new Promise((resolve, reject) => {
          const client = mqtt.connect(url, { protocolVersion, clientId: `browser-${protocolVersion}`, reconnectPeriod: 0 });
          const timer = setTimeout(() => reject(new Error("timed out")), 5000);
          client.on("error", (e) => reject(e));
          client.on("connect", () => {
            client.subscribe("browser/+/echo", { qos: 1 }, (err) => {
              if (err) return reject(err);
              client.publish("browser/page/echo", "hello from chromium", { qos: 1 });
            });
          });
          client.on("message", (topic, payload) => {
            clearTimeout(timer);
            client.end();
            resolve({ topic, payload: payload.toString() });
          });
        }),
      { url: `ws://127.0.0.1:${wsPort}/mqtt`, protocolVersion },
    );
    assert.deepEqual(result, { topic: "browser/page/echo", payload: "hello from chromium" });
    await page.close();
  });
}

test("a device's message published with mosquitto_pub shows up in the browser", async () => {
  const page = await browser.newPage();
  await page.goto(pageUrl);
  await page.evaluate(
    ({ url }) =>
      new Promise((resolve, reject) => {
        window.received = [];
        const client = mqtt.connect(url, { protocolVersion: 5, reconnectPeriod: 0 });
        client.on("error", reject);
        client.on("connect", () => client.subscribe("dwr/#", { qos: 1 }, (err) => (err ? reject(err) : resolve())));
        client.on("message", (topic, payload) => window.received.push(`${topic} ${payload}`));
      }),
    { url: `ws://127.0.0.1:${wsPort}/mqtt` },
  );
  execFileSync("mosquitto_pub", ["-h", "127.0.0.1", "-p", String(tcpPort), "-q", "1", "-t", "dwr/311-a1/00-11-22-33-44-55/hardware/loadavg", "-m", '{"1m":0.42}']);
  await page.waitForFunction(() => window.received.length > 0, null, { timeout: 5000 });
  const received = await page.evaluate(() => window.received);
  assert.deepEqual(received, ['dwr/311-a1/00-11-22-33-44-55/hardware/loadavg {"1m":0.42}']);
  await page.close();
});
