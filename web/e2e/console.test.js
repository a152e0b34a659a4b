// The console end to end: a real `telemark serve` (SQLite in a temporary
// directory, broker on loopback), real simulated devices from `telemark sim`,
// and Debian's Chromium driven by playwright-core. Each test saves a
// screenshot in e2e/screenshots/ and fails on any console error in the page
// that it did not expect.
//
//   TELEMARK_BIN        the binary (default ../target/debug/telemark)
//   E2E_BULK_DEVICES    devices imported for the timing test (default 100000)

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { binary, chromiumLaunch, freePort } from "../../tests/browser/harness.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const bulkDevices = Number(process.env.E2E_BULK_DEVICES ?? 100_000);
const shots = path.join(here, "screenshots");
const ADMIN_PASSWORD = "e2e-admin-password";
const CUSTOMER_PASSWORD = "harbour-password-1";

let dir, serve, sim, browser, base, adminToken, mqttPort;
const fleet = {}; // name -> device id
let serviceModelId;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns something truthy, for at most `ms`. */
async function eventually(what, check, ms = 30_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(250);
  }
}

async function http(method, pathname, { token = adminToken, body, contentType } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  let payload;
  if (body !== undefined) {
    payload = typeof body === "string" ? body : JSON.stringify(body);
    headers["content-type"] = contentType ?? "application/json";
  }
  const response = await fetch(`${base}/api/v1${pathname}`, { method, headers, body: payload });
  const text = await response.text();
  const json = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Error(`${method} ${pathname}: ${response.status} ${text}`);
  return json;
}

function bulkCsv(count) {
  const rows = ["name,serial,mac,model,labels"];
  for (let n = 0; n < count; n++) {
    const mac = [0x02, 0x10, (n >> 24) & 255, (n >> 16) & 255, (n >> 8) & 255, n & 255]
      .map((b) => b.toString(16).padStart(2, "0"))
      .join(":");
    rows.push(`bulk-${String(n).padStart(6, "0")},BULK${String(n).padStart(7, "0")},${mac},311-a1,bulk`);
  }
  return rows.join("\n") + "\n";
}

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "telemark-e2e-"));
  rmSync(shots, { recursive: true, force: true });
  mkdirSync(shots, { recursive: true });
  const httpPort = await freePort();
  mqttPort = await freePort();
  base = `http://127.0.0.1:${httpPort}`;
  serve = spawn(
    binary,
    ["serve", "--data", path.join(dir, "data"), "--http", `127.0.0.1:${httpPort}`, "--mqtt", `127.0.0.1:${mqttPort}`],
    { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, TELEMARK_ADMIN_PASSWORD: ADMIN_PASSWORD, RUST_LOG: "warn" } },
  );
  await eventually("telemark serve", async () => {
    try {
      return (await fetch(`${base}/api/openapi.json`)).ok;
    } catch {
      return false;
    }
  });
  adminToken = (
    await http("POST", "/session", { token: null, body: { username: "admin", password: ADMIN_PASSWORD } })
  ).token;
  const operator = await http("GET", "/session");

  // The tenants: an integrator with two customers, and a customer admin.
  await http("POST", "/device-models", {
    body: { name: "DWM-311-A1", vendor: "D-Link", hardware_revision: "A1", topic_segment: "311-a1" },
  });
  const integrator = await http("POST", "/organisations", {
    body: { parent_id: operator.organisation_id, name: "Northwind Integration" },
  });
  const harbour = await http("POST", "/organisations", { body: { parent_id: integrator.id, name: "Harbour Logistics" } });
  await http("POST", "/organisations", { body: { parent_id: integrator.id, name: "City Transit" } });
  await http("POST", "/users", {
    body: { organisation_id: harbour.id, username: "harbour-admin", password: CUSTOMER_PASSWORD, role: "customer-admin" },
  });
  serviceModelId = (
    await http("POST", "/service-models", { body: { name: "Monitoring 1 year", features: ["monitoring"], duration_days: 365 } })
  ).id;
  await http("POST", "/license-keys", { body: { organisation_id: harbour.id, service_model_id: serviceModelId, count: 5 } });
  await http("POST", "/alarm-rules", {
    body: {
      organisation_id: harbour.id,
      name: "CPU busy",
      kind: "threshold",
      metric: "cpu.usage_percent",
      comparison: ">",
      threshold: 0,
      duration_secs: 0,
      severity: "major",
    },
  });

  // The simulated fleet: three harbour routers and one of City Transit.
  const fleetCsv =
    "name,serial,mac,model,organisation\n" +
    "harbour-001,HL0001,00:1b:11:aa:00:01,311-a1,Harbour Logistics\n" +
    "harbour-002,HL0002,00:1b:11:aa:00:02,311-a1,Harbour Logistics\n" +
    "harbour-003,HL0003,00:1b:11:aa:00:03,311-a1,Harbour Logistics\n" +
    "city-001,CT0001,00:1b:11:bb:00:01,311-a1,City Transit\n";
  const record = await http("POST", "/devices/import?source=fleet.csv", { body: fleetCsv, contentType: "text/csv" });
  assert.equal(record.rows_accepted, 4, JSON.stringify(record));
  let simFleet = "device_id,model,secret\n";
  for (const d of (await http("GET", "/devices?limit=10&search=harbour")).devices.concat(
    (await http("GET", "/devices?limit=10&search=city")).devices,
  )) {
    fleet[d.name] = d.id;
    const credentials = await http("POST", `/devices/${d.id}/credentials`);
    simFleet += `${credentials.username},311-a1,${credentials.password}\n`;
  }
  writeFileSync(path.join(dir, "fleet.csv"), simFleet);
  // The simulated routers check firmware signatures with the platform's key.
  const { public_key: licenseKey } = await http("GET", "/license/public-key");
  sim = spawn(
    binary,
    [
      "sim",
      "--fleet",
      path.join(dir, "fleet.csv"),
      "--broker",
      `mqtt://127.0.0.1:${mqttPort}`,
      "--interval",
      "1",
      "--reboot-ms",
      "800",
      // `=`: a base64url key may begin with "-", which would read as a flag.
      `--license-public-key=${licenseKey}`,
    ],
    { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, RUST_LOG: "warn" } },
  );

  // A registry of the size the console must stay fast at.
  if (bulkDevices > 0) {
    const bulk = await http("POST", "/devices/import?source=bulk.csv", { body: bulkCsv(bulkDevices), contentType: "text/csv" });
    assert.equal(bulk.rows_accepted, bulkDevices);
  }

  browser = await chromium.launch(chromiumLaunch);
});

after(async () => {
  await browser?.close();
  sim?.kill("SIGTERM");
  serve?.kill("SIGTERM");
  await sleep(300);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/**
 * Runs `body` in a fresh browser context logged in as `username`, then
 * saves a screenshot (also when it fails) and fails on any console error
 * whose text or URL matches none of `expected`.
 */
async function inBrowser(name, body, { username = "admin", password = ADMIN_PASSWORD, expected = [] } = {}) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, locale: "en-US" });
  const page = await context.newPage();
  const errors = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`${m.text()} ${m.location().url ?? ""}`);
  });
  page.on("pageerror", (e) => errors.push(`uncaught: ${e.message}`));
  page.setDefaultTimeout(15_000);
  try {
    await page.goto(`${base}/`);
    await page.fill("input[name=username]", username);
    await page.fill("input[name=password]", password);
    await page.click("button[type=submit]");
    await page.waitForSelector("[data-testid=counters]");
    await body(page);
  } finally {
    await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true }).catch(() => {});
    await context.close();
  }
  const unexpected = errors.filter((e) => !expected.some((x) => e.includes(x)));
  assert.deepEqual(unexpected, [], "console errors in the page");
}

test("log in and see the six counters of the registry", () =>
  inBrowser("dashboard", async (page) => {
  const stats = await http("GET", "/statistics");
  const shown = async (key) => (await page.textContent(`[data-counter=${key}] .counter-value`)).trim();
  assert.equal(await shown("devices"), stats.devices.value.toLocaleString("en-US"));
  assert.equal(await shown("system_integrators"), "1");
  assert.equal(await shown("business_customers"), "2");
  assert.equal(await shown("users"), "2");
  assert.equal(await shown("license_keys"), "5");
  await eventually("devices online on the dashboard", async () => {
    await page.reload();
    await page.waitForSelector("[data-testid=counters]");
    return (await shown("online_devices")) === "4";
  });
  }));

test("import a CSV with one bad row, read its error, then import the good rows", () =>
  inBrowser("import", async (page) => {
  await page.click("nav >> text=Import devices");
  const csv =
    "name,serial,mac,model\n" +
    "depot-001,DP0001,00:1b:11:cc:00:01,311-a1\n" +
    "depot-002,DP0002,not-a-mac,311-a1\n" +
    "depot-003,DP0003,00:1b:11:cc:00:03,311-a1\n";
  const file = { name: "depots.csv", mimeType: "text/csv", buffer: Buffer.from(csv) };
  await page.setInputFiles("input[type=file]", file);
  await page.click("text=Upload and import");
  const report = page.locator("[data-testid=import-report]");
  await report.waitFor();
  assert.match(await report.textContent(), /0 row\(s\) accepted, 1 rejected/);
  const rejection = report.locator("table.rejections tbody tr");
  assert.equal(await rejection.count(), 1);
  assert.equal((await rejection.locator("td").first().textContent()).trim(), "3");
  assert.match(await rejection.locator("td").nth(1).textContent(), /mac|MAC/);

  await page.check("text=Import the good rows");
  await page.setInputFiles("input[type=file]", file);
  await page.click("text=Upload and import");
  await page.waitForSelector("[data-testid=import-report] >> text=2 row(s) accepted");
  const found = await http("GET", "/devices?search=depot");
  assert.deepEqual(found.devices.map((d) => d.name).sort(), ["depot-001", "depot-003"]);
  }));

test("bind a license to a device from the device list", () =>
  inBrowser("bind-license", async (page) => {
  await page.goto(`${base}/devices?search=harbour-002`);
  const row = page.locator("[data-testid=devices] tbody tr", { hasText: "harbour-002" });
  await row.waitFor();
  await row.locator("input[type=checkbox]").check();
  await page.click("[data-testid=bulk-bar] >> text=Bind license…");
  await page.selectOption("select[name=service_model]", String(serviceModelId));
  await page.click(".modal button[type=submit]");
  await page.waitForSelector(".modal >> text=Bound 1 of 1");
  await page.click(".modal >> text=Close");
  await page.waitForSelector("[data-testid=devices] tbody tr >> .badge:text('bound')");
  const device = await http("GET", `/devices/${fleet["harbour-002"]}`);
  assert.equal(device.license_state, "bound");
  // Label the same device, then find it by its label.
  await row.locator("input[type=checkbox]").check();
  await page.click("[data-testid=bulk-bar] >> text=Label…");
  await page.fill(".modal input[name=label]", "pier-7");
  await page.click(".modal button[type=submit]");
  await page.waitForSelector("[data-testid=devices] .chip:text('pier-7')");
  await page.click("[data-testid=devices] .chip:text('pier-7')");
  await page.waitForSelector("text=label: pier-7");
  assert.deepEqual((await http("GET", "/devices?label=pier-7")).devices.map((d) => d.name), ["harbour-002"]);
  }));

test("a simulated device's live chart moves", () =>
  inBrowser("live-chart", async (page) => {
  await page.goto(`${base}/devices/${fleet["harbour-001"]}`);
  await page.waitForSelector("[data-testid=live-state]:text('live')");
  const chart = page.locator('[data-testid="chart-cpu.usage_percent"]');
  await chart.waitFor();
  const points = async () => Number(await chart.getAttribute("data-points"));
  const first = await points();
  await eventually("new points on the CPU chart", async () => (await points()) > first + 1, 20_000);
  }));

test("search a device's black-box logs", () =>
  inBrowser("logs", async (page) => {
  await page.goto(`${base}/devices/${fleet["harbour-001"]}`);
  await page.click("role=tab[name='Black box logs']");
  await page.fill("input[aria-label='search logs']", "DHCPACK");
  const lines = page.locator("[data-testid=log-lines] .log-line");
  // The simulator logs a DHCP line now and then: refresh until one is stored.
  await eventually(
    "a DHCPACK line",
    async () => {
      await page.click("text=Refresh");
      await page.waitForTimeout(500);
      return (await lines.count()) > 0;
    },
    60_000,
  );
  for (const text of await lines.locator(".text").allTextContents()) assert.match(text, /DHCPACK/);
  }));

test("run a diagnostic on a device and read its result table, then a bulk job", () =>
  inBrowser("tasks", async (page) => {
  await page.goto(`${base}/devices/${fleet["harbour-001"]}`);
  // The radio panel: what hardware/lte said, and the modem read on demand.
  await page.waitForSelector("[data-testid=radio] >> text=Telia");
  await page.click("[data-testid=radio] >> text=Read modem now");
  await page.waitForSelector("[data-testid=radio] >> text=Reading the modem…");
  await page.waitForSelector("[data-testid=radio] >> text=Read modem now", { timeout: 20_000 });
  await page.click("role=tab[name='Tasks']");
  await page.waitForSelector("[data-testid=device-tasks] tr:has-text('Modem status') .badge:text('succeeded')");
  await page.selectOption("select[aria-label='task type']", "traceroute");
  await page.fill("[data-testid=task-form] input[name=host]", "127.0.0.1");
  await page.click("[data-testid=task-form] button[type=submit]");
  await page.waitForSelector("[data-testid=task-result]:has-text('Traceroute') .badge:text('succeeded')", { timeout: 20_000 });
  const hops = page.locator("[data-testid=hops] tbody tr");
  assert.ok((await hops.count()) >= 4, "the traceroute's hops as table rows");
  assert.equal(await hops.last().locator("td").nth(1).textContent(), "127.0.0.1");
  await page.waitForSelector("[data-testid=device-tasks] >> text=Traceroute");
  // Two devices from the list: one job, followed on its own page.
  await page.goto(`${base}/devices?search=harbour`);
  const rows = page.locator("[data-testid=devices] tbody tr");
  await rows.first().waitFor();
  await rows.nth(0).locator("input[type=checkbox]").check();
  await rows.nth(1).locator("input[type=checkbox]").check();
  await page.click("[data-testid=bulk-bar] >> text=Run task…");
  await page.selectOption(".modal select[aria-label='task type']", "dns_lookup");
  await page.fill(".modal input[name=name]", "telemark.example");
  await page.click(".modal button[type=submit]");
  await page.waitForURL(/\/jobs\/\d+$/);
  await page.waitForSelector(".page-head .actions .badge:text-is('finished')", { timeout: 20_000 });
  assert.equal(await page.locator("[data-testid=executions] tbody tr").count(), 2);
  }));

test("upload an image, preview and start a campaign, follow it to the end, read a device's firmware history", () =>
  inBrowser("firmware", async (page) => {
    await page.goto(`${base}/firmware`);
    await page.click("role=button[name='Upload image']");
    const image = Buffer.alloc(300_000, "telemark router image 2.3.0\n");
    await page.setInputFiles("[data-testid=upload-firmware] input[type=file]", {
      name: "router-2.3.0.img",
      mimeType: "application/octet-stream",
      buffer: image,
    });
    // The form checks before sending.
    await page.fill("[data-testid=upload-firmware] input[name=version]", "2.3");
    await page.click("[data-testid=upload-firmware] button[type=submit]");
    await page.waitForSelector("[data-testid=upload-firmware] .field-error:text('a semantic version, e.g. 2.1.0')");
    await page.fill("[data-testid=upload-firmware] input[name=version]", "2.3.0");
    await page.fill("[data-testid=upload-firmware] textarea[name=notes]", "modem firmware fix");
    await page.click("[data-testid=upload-firmware] button[type=submit]");
    await page.waitForSelector("[data-testid=firmware-images] tr:has-text('router-2.3.0.img') >> text=platform");
    // The simulated routers all report 1.0.0; the bulk registry reports nothing.
    await eventually("the fleet reports its firmware", async () => {
      const devices = await Promise.all(Object.values(fleet).map((id) => http("GET", `/devices/${id}`)));
      return devices.every((d) => d.firmware_version === "1.0.0");
    });
    await page.goto(`${base}/campaigns`);
    await page.click("text=New campaign");
    await page.fill("[data-testid=campaign-form] input[name=name]", "modem fix rollout");
    await page.selectOption("[data-testid=campaign-form] select[name=image_id]", { label: "2.3.0 (router-2.3.0.img)" });
    await page.fill("[data-testid=campaign-form] input[name=current_version]", "1.0.0");
    await page.fill("[data-testid=campaign-form] input[name=waves]", "50, 100");
    await page.fill("[data-testid=campaign-form] input[name=soak]", "1");
    await page.fill("[data-testid=campaign-form] input[name=health]", "3");
    await page.click("[data-testid=campaign-form] button[type=submit]");
    const preview = await page.waitForSelector("[data-testid=campaign-preview]");
    assert.match(await preview.textContent(), /4 device\(s\) in waves of 2 → 2/);
    await page.click("role=button[name='Start on 4 device(s)']");
    await page.waitForURL(/\/campaigns\/\d+$/);
    await page.waitForSelector(".page-head .actions .badge:text-is('finished')", { timeout: 90_000 });
    assert.equal(await page.locator("[data-testid=campaign-waves] tbody tr").count(), 2);
    await page.waitForSelector("[data-testid=campaign-counts] >> text=succeeded");
    assert.equal(await page.locator("[data-testid=campaign-devices] tbody tr:has-text('succeeded')").count(), 4);
    await page.waitForSelector("[data-testid=campaign-progress] canvas");
    await page.screenshot({ path: path.join(shots, "campaign.png"), fullPage: true });
    await page.goto(`${base}/devices/${fleet["harbour-001"]}`);
    await page.click("role=tab[name='Firmware']");
    await page.waitForSelector("[data-testid=firmware-history] tr:has-text('1.0.0 → 2.3.0') >> text=succeeded");
  }));

test("open the terminal of a router running the real agent, type echo hi and read hi", async () => {
  // A router with the real agent (the simulator has no shell).
  const imported = await http("POST", "/devices/import?source=agent.csv", {
    // The operator's own lab router: the tenants' device counts stay as other tests expect.
    body: "name,serial,mac,model\nagent-001,AG0001,00:1b:11:dd:00:01,311-a1\n",
    contentType: "text/csv",
  });
  assert.equal(imported.rows_accepted, 1, JSON.stringify(imported));
  const found = await http("GET", "/devices?limit=1&search=agent-001");
  const device = found.devices[0];
  assert.ok(device, JSON.stringify(found));
  const credentials = await http("POST", `/devices/${device.id}/credentials`);
  const config = path.join(dir, "agent.toml");
  writeFileSync(
    config,
    `broker = "mqtt://127.0.0.1:${mqttPort}"\ndevice_id = "00-1b-11-dd-00-01"\nmodel = "311-a1"\n` +
      `secret = "${credentials.password}"\nbuffer_dir = "${path.join(dir, "agent-buffer")}"\n` +
      `[remote]\nterminal_command = ["/bin/sh"]\n`,
  );
  const agent = spawn(binary, ["agent", "--config", config], {
    stdio: ["ignore", "ignore", "inherit"],
    env: { ...process.env, RUST_LOG: "warn" },
  });
  try {
    await eventually("the agent online", async () => (await http("GET", `/devices/${device.id}`)).online);
    await inBrowser("terminal", async (page) => {
      await page.goto(`${base}/devices/${device.id}`);
      await page.click("role=tab[name='Terminal']");
      await page.click("text=Open terminal");
      await page.waitForSelector("[data-testid=terminal-state]:has-text('Connected')", { timeout: 20_000 });
      // Who is on the device shows beside the terminal.
      await page.waitForSelector("[data-testid=open-sessions] td:text-is('admin')");
      await page.click("[data-testid=terminal]");
      await page.keyboard.type("echo hi-$((40+2))");
      await page.keyboard.press("Enter");
      // The echo of the command line has "$((40+2))"; only the shell's answer has "hi-42".
      await page.waitForSelector("[data-testid=terminal] .xterm-rows >> text=hi-42");
      // The PTY has the browser's size, not a default 80x24.
      await page.keyboard.type("stty size");
      await page.keyboard.press("Enter");
      const size = await eventually("stty size answered", async () => {
        const rows = await page.locator("[data-testid=terminal] .xterm-rows").innerText();
        return rows.match(/^(\d+) (\d+)$/m);
      }, 10_000);
      assert.notEqual(`${size[1]} ${size[2]}`, "24 80", "the terminal was sized to the page");
      await page.click("text=Close terminal");
      await page.waitForSelector("[data-testid=terminal] .xterm-rows >> text=session ended");
    });
    const log = await http("GET", "/audit?limit=50");
    const actions = JSON.stringify(log);
    assert.ok(actions.includes("remote.open") && actions.includes("remote.close"), "the session is in the system log");
  } finally {
    agent.kill("SIGTERM");
  }
});

test("acknowledge an alarm", () =>
  inBrowser("alarm", async (page) => {
  await page.click("nav >> text=Alarms");
  const ack = page.locator("[data-testid=alarms] >> role=button[name='Acknowledge']").first();
  await eventually("an active alarm", async () => {
    await page.reload();
    await page.waitForSelector("h1:text('Alarms')");
    await page.waitForTimeout(300);
    return (await ack.count()) > 0;
  });
  const row = page.locator("[data-testid=alarms] tbody tr", { has: page.locator("role=button[name='Acknowledge']") }).first();
  const href = await row.locator("a").first().getAttribute("href");
  await ack.click();
  await page.waitForSelector("[data-testid=alarms] .badge:text('acknowledged')");
  const deviceId = Number(href.split("/").pop());
  const alarms = await http("GET", `/alarms?device_id=${deviceId}&state=acknowledged`);
  assert.ok(alarms.some((a) => a.acknowledged_by === "admin"), JSON.stringify(alarms));
  }));

test("a customer admin cannot reach another customer's device by URL", () =>
  inBrowser(
    "tenant-isolation",
    async (page) => {
  // No operator menus.
  const nav = await page.textContent("nav.sidebar");
  for (const hidden of ["System integrators", "Device models", "Service models", "Business customers"]) {
    assert.ok(!nav.includes(hidden), `${hidden} in a customer's menu`);
  }
  assert.equal((await page.textContent("[data-counter=devices] .counter-value")).trim(), "3");
  await page.goto(`${base}/devices/${fleet["city-001"]}`);
  await page.waitForSelector("[role=alert] >> text=Not found");
  assert.ok(!(await page.textContent("main")).includes("city-001"));
  await page.goto(`${base}/devices`);
  await page.waitForSelector("[data-testid=devices] tbody tr");
  const names = await page.locator("[data-testid=devices] tbody tr td:nth-child(2)").allTextContents();
  assert.deepEqual(names.sort(), ["harbour-001", "harbour-002", "harbour-003"]);
    },
    { username: "harbour-admin", password: CUSTOMER_PASSWORD, expected: [`/api/v1/devices/${fleet["city-001"]}`] },
  ));

test("every screen of the operator opens without errors", () =>
  inBrowser("screens", async (page) => {
    const screens = [
      ["/devices", "Devices"],
      [`/devices/${fleet["harbour-003"]}`, "harbour-003"],
      ["/alarms", "Alarms"],
      ["/statistics", "Statistics"],
      ["/import", "Import devices"],
      ["/imports", "ERP import records"],
      ["/device-models", "Device models"],
      ["/license-keys", "License keys"],
      ["/service-models", "Service models"],
      ["/integrators", "System integrators"],
      ["/customers", "Business customers"],
      ["/users", "Users and roles"],
      ["/alarm-rules", "Alarm rules"],
      ["/audit", "System logs"],
      ["/account", "Account: admin"],
      ["/jobs", "Jobs"],
      ["/diagnostics", "Diagnostics"],
      ["/firmware", "Firmware"],
      ["/campaigns", "Campaigns"],
      ["/campaigns/new", "New campaign"],
    ];
    for (const [url, title] of screens) {
      await page.goto(`${base}${url}`);
      await page.waitForSelector(`h1:text-is("${title}")`);
      // Each list settles into rows, an empty state or an error in words.
      await page.waitForSelector("main :is(table, .empty, .charts, form, [role=alert])");
      assert.equal(await page.locator("main [role=alert]").count(), 0, `an error on ${url}`);
      await page.screenshot({ path: path.join(shots, `screen${url.replaceAll("/", "-")}.png`) });
    }
    // The system log records what this run did, and exports as CSV.
    await page.goto(`${base}/audit`);
    await page.fill("input[aria-label='search the system log']", "device.import");
    await page.waitForSelector("[data-testid=audit] >> text=fleet.csv");
    const csv = await page.evaluate(async () => (await fetch("/api/v1/audit.csv?search=device.import")).text());
    assert.match(csv, /device\.import/);
    // Change password validates before sending.
    await page.goto(`${base}/account`);
    await page.fill("input[name=current_password]", ADMIN_PASSWORD);
    await page.fill("input[name=new_password]", "short");
    await page.click("text=Change password >> nth=-1");
    await page.waitForSelector(".field-error:text('At least 10 characters.')");
    // An API token that expires in 30 days: shown once, listed with its expiry.
    await page.fill("input[name=token_name]", "nightly-export");
    await page.selectOption("select[name=token_expiry]", "30");
    await page.click("role=button[name='Create token']");
    await page.waitForSelector("text=Token “nightly-export”");
    const tokens = await page.evaluate(async () => (await fetch("/api/v1/tokens")).json());
    const token = tokens.find((t) => t.name === "nightly-export");
    assert.ok(token && Math.abs(token.expires_at - Date.now() - 30 * 86400000) < 600000, JSON.stringify(tokens));
    await page.screenshot({ path: path.join(shots, "api-token.png") });
    // Log out: back to the login form, and the session is gone on the server too.
    await page.click("role=button[name='Log out']");
    await page.waitForSelector("form[aria-label='log in']");
    await page.goto(`${base}/devices`);
    await page.waitForSelector("form[aria-label='log in']");
  }));

test("dashboard and device list are interactive quickly with the bulk registry", () =>
  inBrowser("timings", async (page) => {
  const readyAfter = async (url, mark, selector) => {
    await page.goto(`${base}${url}`);
    await page.waitForSelector(selector);
    return page.evaluate((m) => Math.round(performance.getEntriesByName(m)[0].startTime), mark);
  };
  // Keyset pages: Next shows the following devices, Previous the first ones again.
  await page.goto(`${base}/devices`);
  const firstName = () => page.locator("[data-testid=devices] tbody tr td:nth-child(2)").first().textContent();
  const page1 = await firstName();
  // The pager's label can change a moment before the rows do: wait for the rows.
  const firstNameIs = (name, same) => page.waitForFunction(([n, same]) => {
    const cell = document.querySelector("[data-testid=devices] tbody tr td:nth-child(2)");
    return cell && (cell.textContent === n) === same;
  }, [name, same]);
  await page.click("role=button[name='Next ›']");
  await page.waitForSelector("text=Page 2");
  await firstNameIs(page1, false);
  assert.notEqual(await firstName(), page1);
  await page.click("role=button[name='‹ Previous']");
  await page.waitForFunction(() => !document.body.textContent.includes("Page 2"));
  await firstNameIs(page1, true);
  assert.equal(await firstName(), page1);
  const timings = { devices_in_registry: (await http("GET", "/statistics")).devices.value, runs: [] };
  for (let i = 0; i < 5; i++) {
    timings.runs.push({
      dashboard_ms: await readyAfter("/", "telemark:dashboard-ready", "[data-testid=counters]"),
      device_list_ms: await readyAfter("/devices", "telemark:devices-ready", "[data-testid=devices]"),
    });
  }
  const median = (k) => timings.runs.map((r) => r[k]).sort((a, b) => a - b)[2];
  timings.median_dashboard_ms = median("dashboard_ms");
  timings.median_device_list_ms = median("device_list_ms");
  writeFileSync(path.join(shots, "timings.json"), JSON.stringify(timings, null, 2));
  console.log(
    `# ${timings.devices_in_registry} devices: dashboard ready in ${timings.median_dashboard_ms} ms, ` +
      `device list in ${timings.median_device_list_ms} ms (median of 5, from navigation start)`,
  );
  // The target (< 1 s) is reported in docs/benchmarks.md; here only a bound that catches a broken page.
  assert.ok(timings.median_dashboard_ms < 10_000 && timings.median_device_list_ms < 10_000);
  }));
