import { useState } from "preact/hooks";
import { api, type Alarm, type AlarmRule, type Webhook } from "../api";
import { deviceModels, isAdmin, modelName, organisationName, organisations, session } from "../session";
import {
  Badge,
  ErrorBox,
  Field,
  FormError,
  LoadState,
  Modal,
  Page,
  SeverityBadge,
  ShownOnce,
  Table,
  Time,
  formatNumber,
  formatTime,
  useForm,
  useLoad,
  valueOf,
  type Column,
  DialogButtons,
  useAction,
  useCursorPages,
  nextId,
} from "../components/ui";

const ALARM_TONE: Record<string, string> = { active: "bad", acknowledged: "warn", cleared: "muted" };

export function AlarmTable({
  alarms,
  onChange,
  compact,
}: {
  alarms: Alarm[];
  onChange: () => void;
  compact?: boolean;
}) {
  const { error, run } = useAction();
  const canAcknowledge = session.value?.role !== "viewer";
  const acknowledge = (a: Alarm) => run(() => api(`/alarms/${a.id}/acknowledge`, { method: "POST" }), onChange);
  const columns: Column<Alarm>[] = [
    { title: "Severity", cell: (a) => <SeverityBadge severity={a.severity} /> },
    { title: "Device", cell: (a) => <a href={`/devices/${a.device_id}`}>{a.device_name ?? `device ${a.device_id}`}</a> },
    { title: "Alarm", cell: (a) => a.message },
    { title: "Raised", cell: (a) => <Time ms={a.raised_at} /> },
    { title: "State", cell: (a) => <Badge tone={ALARM_TONE[a.state] ?? "muted"}>{a.state}</Badge> },
  ];
  if (!compact) {
    columns.push(
      { title: "Value", cell: (a) => formatNumber(a.value, 1) },
      {
        title: "Acknowledged",
        cell: (a) => (a.acknowledged_at ? `${a.acknowledged_by ?? ""}, ${formatTime(a.acknowledged_at)}` : "—"),
      },
      { title: "Cleared", cell: (a) => formatTime(a.cleared_at) },
    );
  }
  if (canAcknowledge) {
    columns.push({
      title: "",
      cell: (a) =>
        a.state === "active" && (
          <button type="button" onClick={() => acknowledge(a)}>
            Acknowledge
          </button>
        ),
    });
  }
  return (
    <>
      {error != null && <ErrorBox error={error} />}
      <Table testId="alarms" columns={columns} rows={alarms} rowKey={(a) => a.id} />
    </>
  );
}

export function Alarms() {
  const [state, setState] = useState("open");
  const { cursor: beforeId, pager } = useCursorPages<number>(state);
  const alarms = useLoad(
    (signal) =>
      api<Alarm[]>("/alarms", { query: { state, before_id: beforeId ?? undefined, limit: 50 }, signal }),
    [state, beforeId],
  );
  return (
    <Page title="Alarms" actions={isAdmin.value && <a href="/alarm-rules">Alarm rules ›</a>}>
      <div class="filters">
        <select aria-label="alarm state" value={state} onChange={(e) => setState(valueOf(e))}>
          <option value="open">Open (active or acknowledged)</option>
          <option value="active">Active</option>
          <option value="acknowledged">Acknowledged</option>
          <option value="cleared">Cleared</option>
        </select>
      </div>
      <LoadState loaded={alarms} empty={state === "cleared" ? "No cleared alarms." : "No alarms. All quiet."}>
        {(list) => (
          <>
            <AlarmTable alarms={list} onChange={alarms.reload} />
            {pager(nextId(list, 50), "newest first")}
          </>
        )}
      </LoadState>
    </Page>
  );
}

function ruleCondition(r: AlarmRule): string {
  if (r.kind === "threshold") return `${r.metric} ${r.comparison} ${r.threshold} for ${r.duration_secs} s`;
  if (r.kind === "offline") return `offline for ${r.duration_secs} s`;
  return `firmware is not ${r.expected_firmware}`;
}

export function AlarmRules() {
  const rules = useLoad((signal) => api<AlarmRule[]>("/alarm-rules", { signal }), []);
  const hooks = useLoad((signal) => api<Webhook[]>("/webhooks", { signal }), []);
  const [dialog, setDialog] = useState<"rule" | "webhook" | null>(null);
  const { error, run: act } = useAction();
  return (
    <Page
      title="Alarm rules"
      actions={
        <>
          <button type="button" class="primary" onClick={() => setDialog("rule")}>
            New rule
          </button>
          <button type="button" onClick={() => setDialog("webhook")}>
            New webhook
          </button>
        </>
      }
    >
      {error != null && <ErrorBox error={error} />}
      <LoadState loaded={rules} empty="No alarm rules: devices raise no alarms until you add one.">
        {(list) => (
          <Table
            testId="alarm-rules"
            columns={[
              { title: "Name", cell: (r: AlarmRule) => r.name },
              { title: "Condition", cell: (r) => ruleCondition(r), class: "mono" },
              { title: "Severity", cell: (r) => <SeverityBadge severity={r.severity} /> },
              { title: "Devices", cell: (r) => `${organisationName(r.organisation_id)}, ${modelName(r.model_id)}` },
              { title: "State", cell: (r) => <Badge tone={r.enabled ? "good" : "muted"}>{r.enabled ? "enabled" : "disabled"}</Badge> },
              {
                title: "",
                cell: (r) => (
                  <button
                    type="button"
                    onClick={() =>
                      act(
                        () => api(`/alarm-rules/${r.id}/state`, { method: "POST", body: { enabled: !r.enabled } }),
                        rules.reload,
                      )
                    }
                  >
                    {r.enabled ? "Disable" : "Enable"}
                  </button>
                ),
              },
            ]}
            rows={list}
            rowKey={(r) => r.id}
          />
        )}
      </LoadState>
      <h2>Webhooks</h2>
      <p class="hint">
        Each alarm change is posted as JSON to the webhooks of the device's organisation and those above it, signed
        with <code>X-Telemark-Signature: sha256=…</code>.
      </p>
      <LoadState loaded={hooks} empty="No webhooks.">
        {(list) => (
          <Table
            columns={[
              { title: "URL", cell: (h: Webhook) => h.url, class: "mono" },
              { title: "Organisation", cell: (h) => organisationName(h.organisation_id) },
              { title: "Created", cell: (h) => formatTime(h.created_at) },
              {
                title: "",
                cell: (h) => (
                  <button
                    type="button"
                    class="danger"
                    onClick={() => act(() => api(`/webhooks/${h.id}`, { method: "DELETE" }), hooks.reload)}
                  >
                    Delete
                  </button>
                ),
              },
            ]}
            rows={list}
            rowKey={(h) => h.id}
          />
        )}
      </LoadState>
      {dialog === "rule" && (
        <RuleDialog
          onClose={() => setDialog(null)}
          onDone={() => {
            setDialog(null);
            rules.reload();
          }}
        />
      )}
      {dialog === "webhook" && <WebhookDialog onClose={() => setDialog(null)} onDone={hooks.reload} />}
    </Page>
  );
}

function RuleDialog({ onClose, onDone }: { onClose: () => void; onDone: () => void }) {
  const [v, setV] = useState({
    name: "",
    kind: "threshold",
    organisation_id: String(session.value?.organisation_id ?? ""),
    model_id: "",
    metric: "lte.rsrp_dbm",
    comparison: "<",
    threshold: "-110",
    duration_secs: "600",
    expected_firmware: "",
    severity: "major",
  });
  const set = (k: keyof typeof v) => (e: Parameters<typeof valueOf>[0]) => setV({ ...v, [k]: valueOf(e) });
  const form = useForm(
    async () => {
      await api("/alarm-rules", {
        method: "POST",
        body: {
          name: v.name.trim(),
          kind: v.kind,
          organisation_id: Number(v.organisation_id),
          model_id: v.model_id ? Number(v.model_id) : null,
          metric: v.kind === "threshold" ? v.metric.trim() : null,
          comparison: v.kind === "threshold" ? v.comparison : null,
          threshold: v.kind === "threshold" ? Number(v.threshold) : null,
          duration_secs: v.kind === "firmware" ? 0 : Number(v.duration_secs),
          expected_firmware: v.kind === "firmware" ? v.expected_firmware.trim() : null,
          severity: v.severity,
        },
      });
      onDone();
    },
    () => ({
      name: v.name.trim() ? undefined : "Name the rule.",
      metric: v.kind === "threshold" && !v.metric.trim() ? "Name the metric, e.g. memory.used_percent." : undefined,
      threshold: v.kind === "threshold" && !Number.isFinite(Number(v.threshold)) ? "Enter a number." : undefined,
      duration_secs:
        v.kind !== "firmware" && !(Number.isInteger(Number(v.duration_secs)) && Number(v.duration_secs) >= 0)
          ? "Whole seconds, 0 or more."
          : undefined,
      expected_firmware: v.kind === "firmware" && !v.expected_firmware.trim() ? "Enter the expected version." : undefined,
    }),
  );
  return (
    <Modal title="New alarm rule" onClose={onClose}>
      <form onSubmit={form.submit} noValidate class="form-grid">
        <Field label="Name" error={form.fieldError("name")}>
          <input name="name" value={v.name} onInput={set("name")} autofocus />
        </Field>
        <Field label="Kind" error={form.fieldError("kind")}>
          <select name="kind" value={v.kind} onChange={set("kind")}>
            <option value="threshold">Metric threshold</option>
            <option value="offline">Offline</option>
            <option value="firmware">Firmware mismatch</option>
          </select>
        </Field>
        <Field label="Organisation" error={form.fieldError("organisation_id")}>
          <select name="organisation_id" value={v.organisation_id} onChange={set("organisation_id")}>
            {organisations.value.map((o) => (
              <option value={o.id}>{o.name}</option>
            ))}
          </select>
        </Field>
        <Field label="Device model" error={form.fieldError("model_id")}>
          <select name="model_id" value={v.model_id} onChange={set("model_id")}>
            <option value="">All models</option>
            {deviceModels.value.map((m) => (
              <option value={m.id}>{m.name}</option>
            ))}
          </select>
        </Field>
        {v.kind === "threshold" && (
          <>
            <Field label="Metric" error={form.fieldError("metric")} hint="e.g. memory.used_percent, lte.rsrp_dbm">
              <input name="metric" value={v.metric} onInput={set("metric")} />
            </Field>
            <Field label="Comparison" error={form.fieldError("comparison")}>
              <select name="comparison" value={v.comparison} onChange={set("comparison")}>
                <option value=">">above (&gt;)</option>
                <option value="<">below (&lt;)</option>
              </select>
            </Field>
            <Field label="Threshold" error={form.fieldError("threshold")}>
              <input name="threshold" inputMode="decimal" value={v.threshold} onInput={set("threshold")} />
            </Field>
          </>
        )}
        {v.kind !== "firmware" && (
          <Field label="For at least (seconds)" error={form.fieldError("duration_secs")}>
            <input name="duration_secs" inputMode="numeric" value={v.duration_secs} onInput={set("duration_secs")} />
          </Field>
        )}
        {v.kind === "firmware" && (
          <Field label="Expected firmware" error={form.fieldError("expected_firmware")}>
            <input name="expected_firmware" value={v.expected_firmware} onInput={set("expected_firmware")} />
          </Field>
        )}
        <Field label="Severity" error={form.fieldError("severity")}>
          <select name="severity" value={v.severity} onChange={set("severity")}>
            {["critical", "major", "minor", "warning"].map((s) => (
              <option value={s}>{s}</option>
            ))}
          </select>
        </Field>
        <FormError form={form} />
        <DialogButtons onCancel={onClose} busy={form.busy} label="Create rule" />
      </form>
    </Modal>
  );
}

function WebhookDialog({ onClose, onDone }: { onClose: () => void; onDone: () => void }) {
  const [url, setUrl] = useState("");
  const [organisationId, setOrganisationId] = useState(String(session.value?.organisation_id ?? ""));
  const [created, setCreated] = useState<Webhook | null>(null);
  const form = useForm(
    async () => {
      setCreated(
        await api<Webhook>("/webhooks", {
          method: "POST",
          body: { url: url.trim(), organisation_id: Number(organisationId) },
        }),
      );
      onDone();
    },
    () => ({ url: /^https?:\/\/\S+$/.test(url.trim()) ? undefined : "An http:// or https:// address." }),
  );
  return (
    <Modal title="New webhook" onClose={onClose}>
      {created ? (
        <>
          <ShownOnce label="Signing secret" value={created.secret ?? ""} />
          <footer>
            <button type="button" class="primary" onClick={onClose}>
              Done
            </button>
          </footer>
        </>
      ) : (
        <form onSubmit={form.submit} noValidate>
          <Field label="URL" error={form.fieldError("url")}>
            <input name="url" value={url} onInput={(e) => setUrl(valueOf(e))} placeholder="https://" autofocus />
          </Field>
          <Field label="Organisation" error={form.fieldError("organisation_id")}>
            <select value={organisationId} onChange={(e) => setOrganisationId(valueOf(e))}>
              {organisations.value.map((o) => (
                <option value={o.id}>{o.name}</option>
              ))}
            </select>
          </Field>
          <FormError form={form} />
          <DialogButtons onCancel={onClose} busy={form.busy} label="Create webhook" />
        </form>
      )}
    </Modal>
  );
}
