import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { useRoute } from "preact-iso";
import {
  api,
  type Alarm,
  type Device,
  type LatestReading,
  type LogLine,
  type PresenceChange,
  type Series,
  type TelemetryFaults,
} from "../api";
import { isAdmin, modelName, organisationName } from "../session";
import { alignSeries, RSRP_BANDS, RSRQ_BANDS, SINR_BANDS, TimeChart, type ChartLine, type QualityBand } from "../components/chart";
import {
  Badge,
  ErrorBox,
  FormError,
  LoadState,
  Modal,
  OnlineBadge,
  Page,
  ShownOnce,
  Table,
  Time,
  formatNumber,
  formatTime,
  useDebounced,
  useForm,
  useLoad,
  valueOf,
  DialogButtons,
  useCursorPages,
  nextId,
} from "../components/ui";
import { licenseTone } from "./devices";
import { AlarmTable } from "./alarms";
import { DeviceFirmware } from "./firmware";
import { RemoteTerminal } from "./terminal";
import { DeviceTasks, RadioPanel } from "./tasks";

const RANGES: [string, number][] = [
  ["1 h", 3600_000],
  ["6 h", 6 * 3600_000],
  ["24 h", 24 * 3600_000],
  ["7 d", 7 * 86400_000],
  ["30 d", 30 * 86400_000],
];

type Point = { ts: number; value: number };
type SeriesMap = Record<string, Point[]>;

interface ChartSpec {
  title: string;
  unit?: string;
  metrics: string[];
  labels?: string[];
  bands?: QualityBand[];
  yRange?: [number, number];
}

const COLORS = ["#1f6feb", "#d29922", "#a371f7", "#2ea043", "#db6d28", "#f778ba", "#3fb950", "#8b949e"];

function chartsFor(latest: LatestReading[]): ChartSpec[] {
  const names = new Set(latest.map((r) => r.metric));
  const specs: ChartSpec[] = [
    { title: "CPU", unit: "%", metrics: ["cpu.usage_percent"], labels: ["usage"] },
    { title: "Memory", unit: "%", metrics: ["memory.used_percent"], labels: ["used"] },
    { title: "Load average", metrics: ["load.1m", "load.5m", "load.15m"], labels: ["1 min", "5 min", "15 min"] },
  ];
  const interfaces = [...names]
    .filter((n) => n.startsWith("traffic.") && n.endsWith(".rx_bps"))
    .map((n) => n.slice("traffic.".length, -".rx_bps".length))
    .sort();
  for (const i of interfaces) {
    specs.push({
      title: `Traffic ${i}`,
      unit: "bit/s",
      metrics: [`traffic.${i}.rx_bps`, `traffic.${i}.tx_bps`],
      labels: ["received", "sent"],
    });
  }
  if (names.has("lte.rsrp_dbm") || names.has("lte.sinr_db")) {
    specs.push(
      { title: "LTE RSRP", unit: "dBm", metrics: ["lte.rsrp_dbm"], labels: ["RSRP"], bands: RSRP_BANDS, yRange: [-125, -65] },
      { title: "LTE RSRQ", unit: "dB", metrics: ["lte.rsrq_db"], labels: ["RSRQ"], bands: RSRQ_BANDS, yRange: [-25, -3] },
      { title: "LTE SINR", unit: "dB", metrics: ["lte.sinr_db"], labels: ["SINR"], bands: SINR_BANDS, yRange: [-5, 30] },
    );
  }
  return specs;
}

/** About 300 points across the range, never finer than the readings (1 s). */
function stepFor(range: number): number {
  return Math.max(1000, Math.round(range / 300 / 1000) * 1000);
}

export function DeviceDetail() {
  const { params } = useRoute();
  const id = Number(params.id);
  const device = useLoad((signal) => api<Device>(`/devices/${id}`, { signal }), [id]);
  const [tab, setTab] = useState<"overview" | "tasks" | "terminal" | "firmware" | "logs" | "presence" | "alarms">(
    "overview",
  );
  if (!Number.isInteger(id) || id <= 0) return <Page title="Device">{<ErrorBox error="No such device." />}</Page>;
  return (
    <LoadState loaded={device}>
      {(d) => (
        <Page
          title={d.name}
          actions={
            <>
              <OnlineBadge online={d.online} />
              {isAdmin.value && <CredentialActions device={d} />}
            </>
          }
        >
          <Identity device={d} />
          <nav class="tabs" role="tablist">
            {(
              [
                ["overview", "Live charts"],
                ["tasks", "Tasks"],
                ["terminal", "Terminal"],
                ["firmware", "Firmware"],
                ["logs", "Black box logs"],
                ["presence", "Presence"],
                ["alarms", "Alarms"],
              ] as const
            ).map(([key, label]) => (
              <button
                type="button"
                role="tab"
                aria-selected={tab === key}
                class={tab === key ? "active" : undefined}
                onClick={() => setTab(key)}
              >
                {label}
              </button>
            ))}
          </nav>
          {tab === "overview" && (
            <>
              <RadioPanel device={d} />
              <Charts deviceId={id} />
            </>
          )}
          {tab === "tasks" && <DeviceTasks device={d} />}
          {tab === "terminal" && <RemoteTerminal device={d} />}
          {tab === "firmware" && <DeviceFirmware deviceId={id} />}
          {tab === "logs" && <Logs deviceId={id} />}
          {tab === "presence" && <Presence deviceId={id} />}
          {tab === "alarms" && <DeviceAlarms deviceId={id} />}
        </Page>
      )}
    </LoadState>
  );
}

function Identity({ device: d }: { device: Device }) {
  const faults = useLoad((signal) => api<TelemetryFaults>(`/devices/${d.id}/telemetry-faults`, { signal }), [d.id]);
  return (
    <dl class="identity card">
      <div>
        <dt>Model</dt>
        <dd>{modelName(d.model_id)}</dd>
      </div>
      <div>
        <dt>Organisation</dt>
        <dd>{organisationName(d.organisation_id)}</dd>
      </div>
      <div>
        <dt>Serial number</dt>
        <dd class="mono">{d.serial}</dd>
      </div>
      <div>
        <dt>MAC (MQTT user)</dt>
        <dd class="mono">{d.mac}</dd>
      </div>
      <div>
        <dt>IMEI</dt>
        <dd class="mono">{d.imei ?? "—"}</dd>
      </div>
      <div>
        <dt>ICCID</dt>
        <dd class="mono">{d.iccid ?? "—"}</dd>
      </div>
      <div>
        <dt>License</dt>
        <dd>
          <Badge tone={licenseTone(d.license_state)}>{d.license_state}</Badge>
        </dd>
      </div>
      <div>
        <dt>Firmware</dt>
        <dd data-testid="firmware">{d.firmware_version ?? "not reported"}</dd>
      </div>
      <div>
        <dt>Last seen</dt>
        <dd>
          <Time ms={d.last_seen_at} />
        </dd>
      </div>
      <div>
        <dt>Labels</dt>
        <dd>{d.labels.length ? d.labels.map((l) => <span class="chip">{l}</span>) : "—"}</dd>
      </div>
      <div>
        <dt>Configuration</dt>
        <dd data-testid="config">
          <ConfigState deviceId={d.id} />
        </dd>
      </div>
      <div>
        <dt>Contract faults</dt>
        <dd>
          {faults.data ? (
            faults.data.count === 0 ? (
              "none"
            ) : (
              <span title={faults.data.last_error ?? ""}>
                <Badge tone="warn">{formatNumber(faults.data.count)}</Badge> last <Time ms={faults.data.last_at} />:{" "}
                {faults.data.last_error}
              </span>
            )
          ) : (
            "…"
          )}
        </dd>
      </div>
    </dl>
  );
}

interface DeviceConfig {
  desired_version: number | null;
  desired_job: number | null;
  reported_version: number | null;
  reported_state: string | null;
  drift: boolean;
}

/** Desired against reported configuration: drift shows. */
function ConfigState({ deviceId }: { deviceId: number }) {
  const config = useLoad((signal) => api<DeviceConfig>(`/devices/${deviceId}/config`, { signal }), [deviceId]);
  const c = config.data;
  if (!c) return <>…</>;
  if (c.desired_version === null) return <>{c.reported_version === null ? "none sent" : `v${c.reported_version} applied`}</>;
  if (!c.drift) return <Badge tone="good">v{c.desired_version} applied</Badge>;
  return (
    <span title={c.reported_state ?? ""}>
      <Badge tone="warn">drift</Badge> desired <a href={`/jobs/${c.desired_job}`}>v{c.desired_version}</a>, reported{" "}
      {c.reported_version === null ? "none" : `v${c.reported_version}`}
      {c.reported_state && c.reported_state !== "applied" ? ` (${c.reported_state})` : ""}
    </span>
  );
}

function CredentialActions({ device }: { device: Device }) {
  const [shown, setShown] = useState<"secret" | "certificate" | null>(null);
  return (
    <>
      <button type="button" onClick={() => setShown("secret")}>
        Reset MQTT secret
      </button>
      <button type="button" onClick={() => setShown("certificate")}>
        Issue certificate
      </button>
      {shown && <CredentialDialog device={device} kind={shown} onClose={() => setShown(null)} />}
    </>
  );
}

function CredentialDialog({
  device,
  kind,
  onClose,
}: {
  device: Device;
  kind: "secret" | "certificate";
  onClose: () => void;
}) {
  const [result, setResult] = useState<Record<string, string | null> | null>(null);
  const form = useForm(async () => {
    if (kind === "secret") {
      setResult(await api(`/devices/${device.id}/credentials`, { method: "POST" }));
    } else {
      setResult(await api(`/devices/${device.id}/certificate`, { method: "POST", body: {} }));
    }
  });
  const title = kind === "secret" ? "Reset the MQTT secret" : "Issue a client certificate";
  return (
    <Modal title={title} onClose={onClose}>
      {!result ? (
        <form onSubmit={form.submit}>
          <p>
            {kind === "secret"
              ? "The device's current secret stops working at once; the device needs the new one to connect."
              : "The platform makes a key and a certificate signed by its device CA; the key is shown once."}
          </p>
          <FormError form={form} />
          <DialogButtons onCancel={onClose} busy={form.busy} label={kind === "secret" ? "Reset secret" : "Issue certificate"} danger />
        </form>
      ) : (
        <div>
          <p>
            MQTT user name <code>{result.username}</code>, topics under <code>{result.topic_prefix}</code>.
          </p>
          {result.password && <ShownOnce label="Secret" value={result.password} />}
          {result.private_key_pem && <ShownOnce label="Private key" value={result.private_key_pem} />}
          {result.certificate_pem && (
            <details>
              <summary>Certificate</summary>
              <pre>{result.certificate_pem}</pre>
            </details>
          )}
          <footer>
            <button type="button" class="primary" onClick={onClose}>
              Done
            </button>
          </footer>
        </div>
      )}
    </Modal>
  );
}

function Charts({ deviceId }: { deviceId: number }) {
  const [range, setRange] = useState(RANGES[0][1]);
  const latest = useLoad((signal) => api<LatestReading[]>(`/devices/${deviceId}/metrics`, { signal }), [deviceId]);
  const specs = useMemo(() => (latest.data ? chartsFor(latest.data) : []), [latest.data]);
  const metrics = useMemo(() => specs.flatMap((s) => s.metrics), [specs]);
  const [series, setSeries] = useState<SeriesMap>({});
  const [error, setError] = useState<unknown>(null);
  const [live, setLive] = useState<"connecting" | "live" | "closed">("connecting");

  useEffect(() => {
    if (metrics.length === 0) return;
    const controller = new AbortController();
    const to = Date.now();
    const step = stepFor(range);
    Promise.all(
      metrics.map((m) =>
        api<Series>(`/devices/${deviceId}/metrics/${encodeURIComponent(m)}`, {
          query: { from: to - range, to, step },
          signal: controller.signal,
        }),
      ),
    ).then(
      (all) => {
        const map: SeriesMap = {};
        for (const s of all) map[s.metric] = s.points.map((p) => ({ ts: p.ts, value: p.mean }));
        setSeries(map);
        setError(null);
      },
      (e) => (e as Error).name !== "AbortError" && setError(e),
    );
    return () => controller.abort();
  }, [deviceId, range, metrics.join(",")]);

  // Live readings, batched into one redraw a second.
  const pending = useRef<{ metric: string; ts: number; value: number }[]>([]);
  useEffect(() => {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/api/v1/devices/${deviceId}/live`);
    socket.onopen = () => setLive("live");
    socket.onclose = () => setLive("closed");
    socket.onmessage = (e) => {
      try {
        pending.current.push(JSON.parse(e.data));
      } catch {
        // A message that is not a reading is not for the charts.
      }
    };
    const flush = setInterval(() => {
      if (pending.current.length === 0) return;
      const batch = pending.current;
      pending.current = [];
      setSeries((old) => {
        const next = { ...old };
        const horizon = Date.now() - range;
        for (const r of batch) {
          const points = (next[r.metric] ?? []).filter((p) => p.ts >= horizon);
          points.push({ ts: r.ts, value: r.value });
          next[r.metric] = points;
        }
        return next;
      });
    }, 1000);
    return () => {
      clearInterval(flush);
      socket.close();
    };
  }, [deviceId, range]);

  return (
    <div>
      <div class="toolbar">
        <div class="segmented" role="group" aria-label="time range">
          {RANGES.map(([label, ms]) => (
            <button type="button" class={range === ms ? "active" : undefined} onClick={() => setRange(ms)}>
              {label}
            </button>
          ))}
        </div>
        <span class={`live-state ${live}`} data-testid="live-state">
          {live === "live" ? "● live" : live === "connecting" ? "connecting…" : "live updates stopped"}
        </span>
      </div>
      {error != null && <ErrorBox error={error} />}
      <LoadState loaded={latest} empty="This device has not sent any readings yet.">
        {(readings) => (
          <>
            <div class="charts">
              {specs.map((spec) => {
                const lines: ChartLine[] = spec.metrics.map((m, i) => ({
                  label: spec.labels?.[i] ?? m,
                  color: COLORS[i % COLORS.length],
                }));
                return (
                  <TimeChart
                    testId={`chart-${spec.metrics[0]}`}
                    title={spec.title}
                    unit={spec.unit}
                    lines={lines}
                    bands={spec.bands}
                    yRange={spec.yRange}
                    data={alignSeries(spec.metrics.map((m) => series[m] ?? []))}
                    xRange={[Date.now() - range, Date.now()]}
                  />
                );
              })}
            </div>
            <details class="card">
              <summary>All latest values ({readings.length})</summary>
              <Table
                columns={[
                  { title: "Metric", cell: (r: LatestReading) => r.metric, class: "mono" },
                  { title: "Value", cell: (r) => formatNumber(r.value, Number.isInteger(r.value) ? 0 : 2) },
                  { title: "Device time", cell: (r) => formatTime(r.ts) },
                ]}
                rows={readings}
                rowKey={(r) => r.metric}
              />
            </details>
          </>
        )}
      </LoadState>
    </div>
  );
}

function Logs({ deviceId }: { deviceId: number }) {
  const [stream, setStream] = useState("");
  const [text, setText] = useState("");
  const search = useDebounced(text, 300);
  const { cursor: beforeId, pager } = useCursorPages<number>(`${stream}\n${search}`);
  const lines = useLoad(
    (signal) =>
      api<LogLine[]>(`/devices/${deviceId}/logs`, {
        query: { stream, search, before_id: beforeId ?? undefined, limit: 100 },
        signal,
      }),
    [deviceId, stream, search, beforeId],
  );
  return (
    <div>
      <div class="filters" role="search">
        <input
          type="search"
          aria-label="search logs"
          placeholder="Search the log lines"
          value={text}
          onInput={(e) => setText(valueOf(e))}
        />
        <select aria-label="stream" value={stream} onChange={(e) => setStream(valueOf(e))}>
          <option value="">syslog and dmesg</option>
          <option value="syslog">syslog</option>
          <option value="dmesg">dmesg</option>
        </select>
        <button type="button" onClick={lines.reload}>
          Refresh
        </button>
      </div>
      <LoadState loaded={lines} empty={search ? `No line contains “${search}”.` : "No log lines stored."}>
        {(list) => (
          <>
            <div class="log" data-testid="log-lines">
              {list.map((l) => (
                <div class={`log-line ${l.stream}`}>
                  <time>{formatTime(l.ts)}</time>
                  <span class="stream">{l.stream}</span>
                  <span class="text">{l.line}</span>
                </div>
              ))}
            </div>
            {pager(nextId(list, 100), "newest first")}
          </>
        )}
      </LoadState>
    </div>
  );
}

function Presence({ deviceId }: { deviceId: number }) {
  const changes = useLoad(
    (signal) => api<PresenceChange[]>(`/devices/${deviceId}/presence`, { query: { limit: 200 }, signal }),
    [deviceId],
  );
  return (
    <LoadState loaded={changes} empty="The device has never connected.">
      {(list) => (
        <Table
          testId="presence"
          columns={[
            { title: "When", cell: (c: PresenceChange) => formatTime(c.at) },
            { title: "Change", cell: (c) => <OnlineBadge online={c.online} /> },
            {
              title: "For",
              cell: (c) => {
                const i = list.indexOf(c);
                const until = i === 0 ? Date.now() : list[i - 1].at;
                return durationText(until - c.at) + (i === 0 ? " (so far)" : "");
              },
            },
          ]}
          rows={list}
          rowKey={(c) => c.id}
        />
      )}
    </LoadState>
  );
}

function durationText(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function DeviceAlarms({ deviceId }: { deviceId: number }) {
  const alarms = useLoad(
    (signal) => api<Alarm[]>("/alarms", { query: { device_id: deviceId, limit: 100 }, signal }),
    [deviceId],
  );
  return (
    <LoadState loaded={alarms} empty="No alarms for this device.">
      {(list) => <AlarmTable alarms={list} onChange={alarms.reload} />}
    </LoadState>
  );
}
