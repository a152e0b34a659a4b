// Remote tasks: the form that asks for one (a device's Tasks tab, the
// Diagnostics screen, bulk actions from the device list), results drawn as
// tables rather than JSON, and the Jobs screens with counts per state that
// follow a running job live.

import { useEffect, useState } from "preact/hooks";
import { useLocation, useRoute } from "preact-iso";
import { api, type Device, type DevicePage, type Execution, type ExecutionState, type Job, type Radio } from "../api";
import { canRunTasks } from "../session";
import {
  Badge,
  DialogButtons,
  ErrorBox,
  Field,
  FormError,
  LoadState,
  Modal,
  Page,
  Table,
  Time,
  formatNumber,
  formatTime,
  useAction,
  useDebounced,
  useForm,
  useInterval,
  useLoad,
  valueOf,
} from "../components/ui";

/** The task types a user picks from, with the fields each asks for. */
const TYPES: { type: string; label: string; fields: ParamField[] }[] = [
  { type: "ping", label: "Ping", fields: [{ name: "host", label: "Host", placeholder: "8.8.8.8" }, { name: "count", label: "Packets", number: true, initial: "4" }] },
  { type: "traceroute", label: "Traceroute", fields: [{ name: "host", label: "Host", placeholder: "8.8.8.8" }, { name: "max_hops", label: "Max hops", number: true, initial: "30" }] },
  { type: "dns_lookup", label: "DNS lookup", fields: [{ name: "name", label: "Name", placeholder: "example.com" }] },
  { type: "http_get", label: "HTTP GET", fields: [{ name: "url", label: "URL", placeholder: "https://example.com/" }] },
  { type: "modem_status", label: "Modem status", fields: [] },
  { type: "black_box", label: "Collect black box", fields: [] },
  { type: "reboot", label: "Reboot", fields: [] },
  { type: "shell", label: "Allowed command", fields: [{ name: "command", label: "Command line", placeholder: "uptime" }] },
  {
    type: "configure",
    label: "Configuration",
    fields: [
      { name: "version", label: "Version", number: true, initial: "1" },
      { name: "document", label: "Document (JSON)", json: true, initial: "{}" },
    ],
  },
];

interface ParamField {
  name: string;
  label: string;
  placeholder?: string;
  number?: boolean;
  json?: boolean;
  initial?: string;
}

const STATE_TONE: Record<ExecutionState, string> = {
  queued: "muted",
  sent: "muted",
  in_progress: "warn",
  succeeded: "good",
  failed: "bad",
  rejected: "bad",
  timed_out: "bad",
  cancelled: "muted",
};
const STATES: ExecutionState[] = ["queued", "sent", "in_progress", "succeeded", "failed", "rejected", "timed_out", "cancelled"];
const OPEN: ExecutionState[] = ["queued", "sent", "in_progress"];

export function StateBadge({ state }: { state: ExecutionState }) {
  return <Badge tone={STATE_TONE[state] ?? "muted"}>{state.replace("_", " ")}</Badge>;
}

function typeLabel(type: string): string {
  return TYPES.find((t) => t.type === type)?.label ?? type.replace("_", " ");
}

/** The type select and its parameter fields; `onSubmit` gets the request body. */
function TaskForm({
  submitLabel,
  onSubmit,
  onCancel,
}: {
  submitLabel: string;
  onSubmit: (body: { type: string; params: Record<string, unknown> }) => Promise<void>;
  onCancel?: () => void;
}) {
  const [type, setType] = useState("ping");
  const spec = TYPES.find((t) => t.type === type) ?? TYPES[0];
  const [values, setValues] = useState<Record<string, string>>({});
  const value = (f: ParamField) => values[`${type}.${f.name}`] ?? f.initial ?? "";
  const params = (): Record<string, unknown> => {
    const out: Record<string, unknown> = {};
    for (const f of spec.fields) {
      const v = value(f).trim();
      out[f.name] = f.number ? Number(v) : f.json ? JSON.parse(v) : v;
    }
    return out;
  };
  const form = useForm(
    () => onSubmit({ type, params: params() }),
    () => {
      const problems: Record<string, string | undefined> = {};
      for (const f of spec.fields) {
        const v = value(f).trim();
        if (!v) problems[f.name] = "required";
        else if (f.number && !Number.isInteger(Number(v))) problems[f.name] = "a whole number";
        else if (f.json) {
          try {
            JSON.parse(v);
          } catch {
            problems[f.name] = "not valid JSON";
          }
        }
      }
      return problems;
    },
  );
  return (
    <form onSubmit={form.submit} class="task-form" data-testid="task-form">
      <Field label="Task">
        <select aria-label="task type" value={type} onChange={(e) => setType(valueOf(e))}>
          {TYPES.map((t) => (
            <option value={t.type}>{t.label}</option>
          ))}
        </select>
      </Field>
      {spec.fields.map((f) => (
        <Field label={f.label} error={form.fieldError(f.name) ?? form.fieldError("params")}>
          {f.json ? (
            <textarea
              name={f.name}
              rows={4}
              value={value(f)}
              onInput={(e) => setValues({ ...values, [`${type}.${f.name}`]: valueOf(e) })}
            />
          ) : (
            <input
              name={f.name}
              inputMode={f.number ? "numeric" : undefined}
              placeholder={f.placeholder}
              value={value(f)}
              onInput={(e) => setValues({ ...values, [`${type}.${f.name}`]: valueOf(e) })}
            />
          )}
        </Field>
      ))}
      {type === "reboot" && <p class="hint">The device acknowledges, reboots, and the task succeeds when it is back.</p>}
      <FormError form={form} />
      {onCancel ? (
        <DialogButtons onCancel={onCancel} busy={form.busy} label={submitLabel} danger={type === "reboot"} />
      ) : (
        <button type="submit" class="primary" disabled={form.busy}>
          {submitLabel}
        </button>
      )}
    </form>
  );
}

type Result = Record<string, unknown>;
const num = (v: unknown, digits = 1) => (typeof v === "number" ? formatNumber(v, digits) : "—");
const text = (v: unknown) => (v === null || v === undefined || v === "" ? "—" : String(v));

function Pairs({ rows }: { rows: [string, string][] }) {
  return (
    <dl class="identity result-pairs">
      {rows.map(([k, v]) => (
        <div>
          <dt>{k}</dt>
          <dd>{v}</dd>
        </div>
      ))}
    </dl>
  );
}

/** A result as its type reads best, the raw output folded beside it. */
export function ResultView({ execution: e }: { execution: Execution }) {
  const r = (e.result ?? {}) as Result;
  let body = null;
  switch (e.type) {
    case "ping":
      body = (
        <Pairs
          rows={[
            ["Host", text(r.host)],
            ["Sent", text(r.sent)],
            ["Received", text(r.received)],
            ["Loss", `${num(r.loss_percent, 0)} %`],
            ["RTT min / avg / max", `${num(r.rtt_min_ms)} / ${num(r.rtt_avg_ms)} / ${num(r.rtt_max_ms)} ms`],
          ]}
        />
      );
      break;
    case "traceroute": {
      const hops = (r.hops as { hop: number; address: string | null; rtt_ms: number | null }[]) ?? [];
      const slowest = Math.max(1, ...hops.map((h) => h.rtt_ms ?? 0));
      body = (
        <>
        <div class="hop-chart" role="img" aria-label="round-trip time per hop">
          {hops.map((h) => (
            <div class="hop-bar" title={`hop ${h.hop}: ${h.rtt_ms === null ? "no answer" : `${num(h.rtt_ms, 2)} ms`}`}>
              <span class="hop-label">{h.hop}</span>
              <span class={h.rtt_ms === null ? "bar silent" : "bar"} style={{ width: `${h.rtt_ms === null ? 100 : (100 * h.rtt_ms) / slowest}%` }} />
              <span class="hop-value">{h.rtt_ms === null ? "*" : `${num(h.rtt_ms, 1)} ms`}</span>
            </div>
          ))}
        </div>
        <Table
          testId="hops"
          columns={[
            { title: "Hop", cell: (h) => h.hop, class: "num" },
            { title: "Address", cell: (h) => <span class="mono">{h.address ?? "*"}</span> },
            { title: "RTT", cell: (h) => (h.rtt_ms === null ? "—" : `${num(h.rtt_ms, 2)} ms`), class: "num" },
          ]}
          rows={hops}
          rowKey={(h) => h.hop}
        />
        </>
      );
      break;
    }
    case "dns_lookup":
      body = <Pairs rows={[["Name", text(r.name)], ["Answers", ((r.answers as string[]) ?? []).join(", ") || "—"], ["Time", `${num(r.time_ms)} ms`]]} />;
      break;
    case "http_get":
      body = (
        <Pairs
          rows={[
            ["URL", text(r.url)],
            ["Status", text(r.status)],
            ["Time to first byte", `${num(r.time_to_first_byte_ms)} ms`],
            ["Total", `${num(r.total_ms)} ms`],
            ["Bytes", num(r.bytes, 0)],
            ["Throughput", `${num(typeof r.throughput_bps === "number" ? r.throughput_bps / 1e6 : null, 2)} Mbit/s`],
          ]}
        />
      );
      break;
    case "modem_status":
      body = (
        <Pairs
          rows={[
            ["Registration", text(r.registration)],
            ["Operator", text(r.operator)],
            ["Technology", text(r.technology)],
            ["Band", text(r.band)],
            ["RSRP", `${num(r.rsrp_dbm)} dBm`],
            ["RSRQ", `${num(r.rsrq_db)} dB`],
            ["SINR", `${num(r.sinr_db)} dB`],
            ["Cell", text(r.cell_id)],
            ["Carrier aggregation", ((r.carrier_aggregation as { band: string }[]) ?? []).map((c) => c.band).join(" + ") || "—"],
          ]}
        />
      );
      break;
    case "shell":
      body = (
        <>
          <Pairs rows={[["Exit code", text(r.exit_code)], ["Truncated", r.truncated ? "yes" : "no"]]} />
          <pre class="output">{text(r.output)}</pre>
        </>
      );
      break;
    case "reboot":
      body = <Pairs rows={[["Boot before", text(r.boot_id_before ?? r.boot_id)], ["Boot after", text(r.boot_id_after)]]} />;
      break;
    case "configure":
      body = <Pairs rows={[["Applied version", text(r.applied_version)], ["State", text(r.state)]]} />;
      break;
    case "black_box":
      body = (
        <Pairs
          rows={[
            ["Size", `${num(typeof r.bytes === "number" ? r.bytes / 1024 : null, 1)} KiB`],
            ["Sections", ((r.sections as string[]) ?? []).join(", ") || "—"],
            ["SHA-256", text(r.sha256)],
          ]}
        />
      );
      break;
    default:
      body = e.result ? <pre class="output">{JSON.stringify(e.result, null, 2)}</pre> : null;
  }
  return (
    <div class="task-result" data-testid="task-result">
      <p>
        <StateBadge state={e.state} /> {typeLabel(e.type)} on {e.device_name}, attempt {e.attempt}
        {e.finished_at && (
          <>
            , finished <Time ms={e.finished_at} />
          </>
        )}
        {e.progress !== null && OPEN.includes(e.state) && <> — {e.progress} %</>}
      </p>
      {e.error && <ErrorBox error={e.error} />}
      {e.message && <p class="hint">{e.message}</p>}
      {e.result && body}
      {typeof r.raw === "string" && r.raw && (
        <details>
          <summary>Raw output</summary>
          <pre class="output">{r.raw}</pre>
        </details>
      )}
    </div>
  );
}

function summary(e: Execution): string {
  const r = (e.result ?? {}) as Result;
  if (e.error) return e.error;
  switch (e.type) {
    case "ping":
      return e.result ? `${text(r.received)}/${text(r.sent)} received, avg ${num(r.rtt_avg_ms)} ms` : "";
    case "traceroute":
      return e.result ? `${((r.hops as unknown[]) ?? []).length} hops` : "";
    case "http_get":
      return e.result ? `HTTP ${text(r.status)}, ${num(r.total_ms, 0)} ms` : "";
    case "dns_lookup":
      return e.result ? ((r.answers as string[]) ?? []).join(", ") : "";
    default:
      return e.message ?? "";
  }
}

/** The device page's Tasks tab. */
export function DeviceTasks({ device }: { device: Device }) {
  const list = useLoad((signal) => api<Execution[]>(`/devices/${device.id}/tasks`, { signal, query: { limit: 50 } }), [device.id]);
  const [shown, setShown] = useState<number | null>(null);
  const open = list.data?.some((e) => OPEN.includes(e.state));
  useInterval(() => open && list.reload(), 1000);
  const current = list.data?.find((e) => e.id === shown) ?? list.data?.[0];
  return (
    <div class="tasks-tab">
      {canRunTasks.value && (
        <section class="card">
          <h3>Run a task</h3>
          {!device.online && <p class="hint">The device is offline: the task is sent when it connects (within a day).</p>}
          <TaskForm
            submitLabel="Run"
            onSubmit={async (body) => {
              const execution = await api<Execution>(`/devices/${device.id}/tasks`, { method: "POST", body });
              setShown(execution.id);
              list.reload();
            }}
          />
        </section>
      )}
      {current && (
        <section class="card">
          <ResultView execution={current} />
        </section>
      )}
      <Bundles deviceId={device.id} refresh={list.data?.filter((e) => e.type === "black_box" && e.state === "succeeded").length ?? 0} />
      <LoadState loaded={list} isEmpty={(l) => l.length === 0} empty="No tasks have run on this device yet.">
        {(l) => (
          <Table
            testId="device-tasks"
            columns={[
              { title: "Queued", cell: (e) => formatTime(e.queued_at) },
              { title: "Task", cell: (e) => <button type="button" class="link" onClick={() => setShown(e.id)}>{typeLabel(e.type)}</button> },
              { title: "State", cell: (e) => <StateBadge state={e.state} /> },
              { title: "Attempt", cell: (e) => e.attempt, class: "num" },
              { title: "Result", cell: (e) => summary(e) },
              { title: "Job", cell: (e) => <a href={`/jobs/${e.job_id}`}>#{e.job_id}</a> },
            ]}
            rows={l}
            rowKey={(e) => e.id}
          />
        )}
      </LoadState>
    </div>
  );
}

interface Bundle {
  id: number;
  execution_id: number;
  size: number | null;
  sha256: string | null;
  received_at: number | null;
}

/** The black-box bundles a device uploaded, to download. */
function Bundles({ deviceId, refresh }: { deviceId: number; refresh: number }) {
  const bundles = useLoad((signal) => api<Bundle[]>(`/devices/${deviceId}/black-box`, { signal }), [deviceId, refresh]);
  if (!bundles.data?.length) return null;
  return (
    <section class="card">
      <h3>Black-box bundles</h3>
      <Table
        testId="bundles"
        columns={[
          { title: "Received", cell: (b) => formatTime(b.received_at) },
          { title: "Size", cell: (b) => `${formatNumber((b.size ?? 0) / 1024, 1)} KiB`, class: "num" },
          { title: "SHA-256", cell: (b) => <span class="mono" title={b.sha256 ?? ""}>{(b.sha256 ?? "").slice(0, 12)}…</span> },
          { title: "", cell: (b) => <a href={`/api/v1/black-box-bundles/${b.id}`} download>Download</a> },
        ]}
        rows={bundles.data}
        rowKey={(b) => b.id}
      />
    </section>
  );
}

/** The Diagnostics screen: pick a device, run a diagnostic, read it. */
export function Diagnostics() {
  const [search, setSearch] = useState("");
  const term = useDebounced(search);
  const [device, setDevice] = useState<Device | null>(null);
  const found = useLoad(
    (signal) => api<DevicePage>("/devices", { signal, query: { search: term || undefined, limit: 8 } }),
    [term],
  );
  return (
    <Page title="Diagnostics">
      <div class="filters">
        <input type="search" placeholder="Find a device: name, serial, MAC, IMEI" value={search} onInput={(e) => setSearch(valueOf(e))} aria-label="device" />
      </div>
      {!device && (
        <LoadState loaded={found} isEmpty={(p) => p.devices.length === 0} empty="No device matches.">
          {(p) => (
            <Table
              testId="pick-device"
              columns={[
                {
                  title: "Device",
                  cell: (d) => (
                    <button type="button" class="link" onClick={() => setDevice(d)}>
                      {d.name}
                    </button>
                  ),
                },
                { title: "MAC", cell: (d) => <span class="mono">{d.mac}</span> },
                { title: "State", cell: (d) => <Badge tone={d.online ? "good" : "muted"}>{d.online ? "online" : "offline"}</Badge> },
              ]}
              rows={p.devices}
              rowKey={(d) => d.id}
            />
          )}
        </LoadState>
      )}
      {device && (
        <>
          <p>
            Device <a href={`/devices/${device.id}`}>{device.name}</a>{" "}
            <button type="button" class="link" onClick={() => setDevice(null)}>
              change
            </button>
          </p>
          <DeviceTasks device={device} />
        </>
      )}
    </Page>
  );
}

/** Bulk action from the device list: one job over the selected devices. */
export function BulkTaskDialog({ deviceIds, onClose }: { deviceIds: number[]; onClose: () => void }) {
  const { route } = useLocation();
  const [rate, setRate] = useState("");
  const [abort, setAbort] = useState("");
  const [retries, setRetries] = useState("0");
  return (
    <Modal title={`Run a task on ${deviceIds.length} devices`} onClose={onClose}>
      <div class="inline-fields">
        <Field label="Start at most (per minute)" hint="empty: as fast as devices answer">
          <input inputMode="numeric" value={rate} onInput={(e) => setRate(valueOf(e))} aria-label="rollout per minute" />
        </Field>
        <Field label="Abort above failure %" hint="once 10 finished">
          <input inputMode="numeric" value={abort} onInput={(e) => setAbort(valueOf(e))} aria-label="abort failure percent" />
        </Field>
        <Field label="Retries">
          <input inputMode="numeric" value={retries} onInput={(e) => setRetries(valueOf(e))} aria-label="retries" />
        </Field>
      </div>
      <TaskForm
        submitLabel="Start job"
        onCancel={onClose}
        onSubmit={async (body) => {
          const job = await api<Job>("/jobs", {
            method: "POST",
            body: {
              ...body,
              device_ids: deviceIds,
              rollout_per_minute: rate ? Number(rate) : undefined,
              abort_failure_ratio: abort ? Number(abort) / 100 : undefined,
              max_retries: Number(retries) || 0,
            },
          });
          onClose();
          route(`/jobs/${job.id}`);
        }}
      />
    </Modal>
  );
}

function Counts({ job }: { job: Job }) {
  const total = Math.max(job.total, 1);
  return (
    <div class="job-counts" data-testid="job-counts">
      <div class="progress-bar" role="img" aria-label="executions by state">
        {STATES.filter((s) => job.counts[s]).map((s) => (
          <span class={`seg ${STATE_TONE[s]}`} style={{ width: `${(100 * (job.counts[s] ?? 0)) / total}%` }} title={`${s}: ${job.counts[s]}`} />
        ))}
      </div>
      <span class="count-list">
        {STATES.filter((s) => job.counts[s]).map((s) => (
          <span>
            <StateBadge state={s} /> {formatNumber(job.counts[s] ?? 0)}
          </span>
        ))}
      </span>
    </div>
  );
}

function jobTone(state: Job["state"]): string {
  return { running: "warn", finished: "good", cancelled: "muted", aborted: "bad" }[state];
}

/** The Jobs screen. */
export function Jobs() {
  const jobs = useLoad((signal) => api<Job[]>("/jobs", { signal, query: { limit: 100 } }), []);
  useInterval(() => jobs.data?.some((j) => !j.finished_at) && jobs.reload(), 2000);
  return (
    <Page title="Jobs">
      <LoadState loaded={jobs} isEmpty={(l) => l.length === 0} empty="No jobs yet. Select devices in the device list to run one.">
        {(l) => (
          <Table
            testId="jobs"
            columns={[
              { title: "Job", cell: (j) => <a href={`/jobs/${j.id}`}>#{j.id}</a> },
              { title: "Task", cell: (j) => typeLabel(j.type) },
              { title: "Description", cell: (j) => j.description || "—" },
              { title: "Devices", cell: (j) => formatNumber(j.total), class: "num" },
              { title: "State", cell: (j) => <Badge tone={jobTone(j.state)}>{j.state}</Badge> },
              { title: "Progress", cell: (j) => <Counts job={j} /> },
              { title: "By", cell: (j) => j.created_by },
              { title: "Started", cell: (j) => formatTime(j.created_at) },
            ]}
            rows={l}
            rowKey={(j) => j.id}
          />
        )}
      </LoadState>
    </Page>
  );
}

/** One job: counts per state, live while it runs, and its executions. */
export function JobDetail() {
  const { params } = useRoute();
  const id = Number(params.id);
  const job = useLoad((signal) => api<Job>(`/jobs/${id}`, { signal }), [id]);
  const [state, setState] = useState("");
  const executions = useLoad(
    (signal) => api<Execution[]>(`/jobs/${id}/executions`, { signal, query: { state: state || undefined, limit: 200 } }),
    [id, state],
  );
  const [shown, setShown] = useState<Execution | null>(null);
  const { error, run } = useAction();
  const running = job.data && !job.data.finished_at;
  // Changes arrive over the WebSocket; the page redraws at most once a second.
  useEffect(() => {
    if (!running) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/api/v1/jobs/${id}/live`);
    let dirty = false;
    socket.onmessage = () => (dirty = true);
    const timer = setInterval(() => {
      if (dirty) {
        dirty = false;
        job.reload();
        executions.reload();
      }
    }, 1000);
    return () => {
      clearInterval(timer);
      socket.close();
    };
  }, [id, running]);
  useInterval(() => running && job.reload(), 5000);
  return (
    <LoadState loaded={job}>
      {(j) => (
        <Page
          title={`Job #${j.id}: ${typeLabel(j.type)}`}
          actions={
            <>
              <Badge tone={jobTone(j.state)}>{j.state}</Badge>
              {canRunTasks.value && j.state === "running" && (
                <button
                  type="button"
                  class="danger"
                  onClick={() => confirm("Cancel the job? Nothing more is sent; open executions are cancelled.") && run(() => api(`/jobs/${id}/cancel`, { method: "POST" }), job.reload)}
                >
                  Cancel job
                </button>
              )}
            </>
          }
        >
          {error && <ErrorBox error={error} />}
          <dl class="identity card">
            <div>
              <dt>Devices</dt>
              <dd>{formatNumber(j.total)}</dd>
            </div>
            <div>
              <dt>Parameters</dt>
              <dd class="mono">{JSON.stringify(j.params)}</dd>
            </div>
            <div>
              <dt>Started by</dt>
              <dd>
                {j.created_by}, <Time ms={j.created_at} />
              </dd>
            </div>
            <div>
              <dt>Finished</dt>
              <dd>{j.finished_at ? <Time ms={j.finished_at} /> : "not yet"}</dd>
            </div>
            <div>
              <dt>Timeout / retries</dt>
              <dd>
                {j.timeout_secs} s / {j.max_retries} (backoff {j.retry_backoff_secs} s, doubling)
              </dd>
            </div>
            <div>
              <dt>Rollout</dt>
              <dd>{j.rollout_per_minute ? `${j.rollout_per_minute} a minute` : "all at once"}</dd>
            </div>
            <div>
              <dt>Abort rule</dt>
              <dd>
                {j.abort_failure_ratio !== null ? `above ${Math.round(j.abort_failure_ratio * 100)} % failed after ${j.abort_min_finished}` : "none"}
              </dd>
            </div>
            <div>
              <dt>Expires</dt>
              <dd>
                <Time ms={j.expires_at} />
              </dd>
            </div>
          </dl>
          <Counts job={j} />
          <div class="filters">
            <select aria-label="state" value={state} onChange={(e) => setState(valueOf(e))}>
              <option value="">Every state</option>
              {STATES.map((s) => (
                <option value={s}>{s.replace("_", " ")}</option>
              ))}
            </select>
          </div>
          {shown && (
            <Modal title={`Execution #${shown.id}`} onClose={() => setShown(null)}>
              <ResultView execution={shown} />
            </Modal>
          )}
          <LoadState loaded={executions} isEmpty={(l) => l.length === 0} empty="No execution in this state.">
            {(l) => (
              <Table
                testId="executions"
                columns={[
                  { title: "Device", cell: (e) => <a href={`/devices/${e.device_id}`}>{e.device_name}</a> },
                  { title: "State", cell: (e) => <StateBadge state={e.state} /> },
                  { title: "Attempt", cell: (e) => e.attempt, class: "num" },
                  { title: "Result", cell: (e) => <button type="button" class="link" onClick={() => setShown(e)}>{summary(e) || "details"}</button> },
                  { title: "Sent", cell: (e) => formatTime(e.sent_at) },
                  { title: "Finished", cell: (e) => formatTime(e.finished_at) },
                  {
                    title: "",
                    cell: (e) =>
                      canRunTasks.value &&
                      (OPEN.includes(e.state) ? (
                        <button type="button" onClick={() => run(() => api(`/executions/${e.id}/cancel`, { method: "POST" }), executions.reload)}>
                          Cancel
                        </button>
                      ) : (
                        <button type="button" onClick={() => run(() => api(`/executions/${e.id}/retry`, { method: "POST" }))}>
                          Run again
                        </button>
                      )),
                  },
                ]}
                rows={l}
                rowKey={(e) => e.id}
              />
            )}
          </LoadState>
        </Page>
      )}
    </LoadState>
  );
}

const CHANGE_LABEL: Record<string, string> = {
  band: "Band",
  cell: "Cell handover",
  operator: "Operator",
  technology: "Technology",
  carrier_aggregation: "Carrier aggregation",
};

function carriers(bands: string | null): string {
  return bands ? bands.replaceAll("+", " + ") : "none";
}

/** The radio the device is on, its recent handovers, and a modem read on demand. */
export function RadioPanel({ device }: { device: Device }) {
  const radio = useLoad((signal) => api<Radio>(`/devices/${device.id}/radio`, { signal, query: { limit: 10 } }), [device.id]);
  const [reading, setReading] = useState<number | null>(null);
  const { error, run } = useAction();
  useInterval(() => radio.reload(), reading ? 1000 : 30_000);
  useEffect(() => {
    if (!reading) return;
    const check = setInterval(async () => {
      const e = await api<Execution>(`/executions/${reading}`);
      if (!OPEN.includes(e.state)) {
        setReading(null);
        radio.reload();
      }
    }, 1000);
    return () => clearInterval(check);
  }, [reading]);
  const r = radio.data?.state;
  return (
    <section class="card radio" data-testid="radio">
      <header class="card-head">
        <h3>Radio</h3>
        {canRunTasks.value && (
          <button
            type="button"
            disabled={!!reading || !device.online}
            title={device.online ? "Ask the modem now (modem_status task)" : "The device is offline"}
            onClick={() =>
              run(async () => {
                const e = await api<Execution>(`/devices/${device.id}/tasks`, { method: "POST", body: { type: "modem_status" } });
                setReading(e.id);
              })
            }
          >
            {reading ? "Reading the modem…" : "Read modem now"}
          </button>
        )}
      </header>
      {error && <ErrorBox error={error} />}
      {!r ? (
        <p class="empty">No radio reported yet.</p>
      ) : (
        <>
          <Pairs
            rows={[
              ["Technology", text(r.technology)],
              ["Band", text(r.band)],
              ["Carrier aggregation", r.carrier_aggregation.length ? [r.band, ...r.carrier_aggregation.map((c) => c.band)].filter(Boolean).join(" + ") : "none"],
              ["Operator", r.smcc && r.smnc ? `${text(r.operator)} (${r.smcc}-${r.smnc})` : text(r.operator)],
              ["Cell", text(r.cell_id)],
              ["From", `${r.source === "modem_status" ? "modem status" : "telemetry"}, ${formatTime(r.updated_at)}`],
            ]}
          />
          {radio.data!.changes.length > 0 && (
            <Table
              testId="radio-changes"
              columns={[
                { title: "When", cell: (c) => <Time ms={c.at} /> },
                { title: "Change", cell: (c) => CHANGE_LABEL[c.kind] ?? c.kind },
                {
                  title: "From → to",
                  cell: (c) =>
                    c.kind === "carrier_aggregation" ? `${carriers(c.before)} → ${carriers(c.after)}` : `${text(c.before)} → ${text(c.after)}`,
                },
              ]}
              rows={radio.data!.changes}
              rowKey={(c) => c.id}
            />
          )}
        </>
      )}
    </section>
  );
}
