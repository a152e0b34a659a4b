// Firmware over the air: the repository (upload with progress, what each
// image is signed by and for), campaigns (made with a preview of the
// devices they touch, followed live wave by wave with a chart of devices
// finishing, paused, resumed or aborted by hand), and a device's history.

import { useState } from "preact/hooks";
import { useLocation, useRoute } from "preact-iso";
import {
  api,
  uploadWithProgress,
  withQuery,
  type Campaign,
  type CampaignDevice,
  type CampaignPreview,
  type CampaignProgress,
  type DeviceModel,
  type FirmwareHistory,
  type FirmwareImage,
} from "../api";
import { isAdmin } from "../session";
import { TimeChart, type ChartData } from "../components/chart";
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
  useForm,
  useInterval,
  useLoad,
  valueOf,
} from "../components/ui";

function formatBytes(n: number): string {
  if (n >= 1 << 30) return `${formatNumber(n / (1 << 30), 1)} GiB`;
  if (n >= 1 << 20) return `${formatNumber(n / (1 << 20), 1)} MiB`;
  if (n >= 1 << 10) return `${formatNumber(n / (1 << 10), 1)} KiB`;
  return `${n} B`;
}

function modelNames(ids: number[], models: DeviceModel[] | undefined): string {
  return ids.map((id) => models?.find((m) => m.id === id)?.name ?? `#${id}`).join(", ");
}

/** The upload dialog: the file streams to the server, hashed and signed there. */
function UploadImage({ models, onClose, onDone }: { models: DeviceModel[]; onClose: () => void; onDone: () => void }) {
  const [file, setFile] = useState<File | null>(null);
  const [version, setVersion] = useState("");
  const [chosen, setChosen] = useState<number[]>(models.length === 1 ? [models[0].id] : []);
  const [minVersion, setMinVersion] = useState("");
  const [notes, setNotes] = useState("");
  const [progress, setProgress] = useState<number | null>(null);
  const form = useForm(
    async () => {
      const query = withQuery("/firmware", {
        version: version.trim(),
        model_ids: chosen.join(","),
        min_version: minVersion.trim() || undefined,
        notes: notes.trim() || undefined,
        file_name: file!.name,
      });
      setProgress(0);
      try {
        await uploadWithProgress<FirmwareImage>(query, file!, "application/octet-stream", setProgress);
      } finally {
        setProgress(null);
      }
      onDone();
    },
    () => ({
      file: file ? undefined : "choose the image file",
      version: /^v?\d+\.\d+\.\d+/.test(version.trim()) ? undefined : "a semantic version, e.g. 2.1.0",
      model_ids: chosen.length ? undefined : "at least one model",
    }),
  );
  return (
    <Modal title="Upload firmware" onClose={onClose}>
      <form onSubmit={form.submit} data-testid="upload-firmware">
        <Field label="Image file" error={form.fieldError("file")}>
          <input type="file" name="file" onChange={(e) => setFile(e.currentTarget.files?.[0] ?? null)} />
        </Field>
        <Field label="Version" error={form.fieldError("version")}>
          <input name="version" placeholder="2.2.0" value={version} onInput={(e) => setVersion(valueOf(e))} />
        </Field>
        <Field label="For models" error={form.fieldError("model_ids")}>
          <div class="checks">
            {models.map((m) => (
              <label>
                <input
                  type="checkbox"
                  checked={chosen.includes(m.id)}
                  onChange={() => setChosen(chosen.includes(m.id) ? chosen.filter((c) => c !== m.id) : [...chosen, m.id])}
                />{" "}
                {m.name}
              </label>
            ))}
          </div>
        </Field>
        <Field label="Minimum current version" hint="devices below it are not offered this image" error={form.fieldError("min_version")}>
          <input name="min_version" placeholder="optional" value={minVersion} onInput={(e) => setMinVersion(valueOf(e))} />
        </Field>
        <Field label="Release notes" error={form.fieldError("notes")}>
          <textarea name="notes" rows={3} value={notes} onInput={(e) => setNotes(valueOf(e))} />
        </Field>
        {progress !== null && (
          <div class="progress" role="progressbar" aria-valuenow={Math.round(progress * 100)}>
            <div style={{ width: `${progress * 100}%` }} />
            <span>{progress < 1 ? `Uploading… ${Math.round(progress * 100)} %` : "Hashing and signing…"}</span>
          </div>
        )}
        <FormError form={form} />
        <DialogButtons onCancel={onClose} busy={form.busy} label="Upload" />
      </form>
    </Modal>
  );
}

/** The Firmware screen: the repository. */
export function Firmware() {
  const images = useLoad((signal) => api<FirmwareImage[]>("/firmware", { signal }), []);
  const models = useLoad((signal) => api<DeviceModel[]>("/device-models", { signal }), []);
  const platformKey = useLoad((signal) => api<{ public_key: string }>("/license/public-key", { signal }), []);
  const [uploading, setUploading] = useState(false);
  const { error, run } = useAction();
  return (
    <Page
      title="Firmware"
      actions={
        isAdmin.value && (
          <button type="button" class="primary" disabled={!models.data?.length} onClick={() => setUploading(true)}>
            Upload image
          </button>
        )
      }
    >
      {uploading && models.data && (
        <UploadImage
          models={models.data}
          onClose={() => setUploading(false)}
          onDone={() => {
            setUploading(false);
            images.reload();
          }}
        />
      )}
      {error && <ErrorBox error={error} />}
      <LoadState loaded={images} isEmpty={(l) => l.length === 0} empty="No firmware images yet.">
        {(l) => (
          <Table
            testId="firmware-images"
            columns={[
              { title: "Version", cell: (i) => <strong>{i.version}</strong> },
              { title: "File", cell: (i) => <a href={`/api/v1/firmware/${i.id}/file`}>{i.file_name}</a> },
              { title: "Size", cell: (i) => formatBytes(i.size), class: "num" },
              { title: "Models", cell: (i) => modelNames(i.model_ids, models.data) },
              { title: "Minimum", cell: (i) => i.min_version ?? "—" },
              {
                title: "Signed by",
                cell: (i) => (
                  <span title={i.signed_by}>{i.signed_by === platformKey.data?.public_key ? "platform" : `vendor ${i.signed_by.slice(0, 8)}…`}</span>
                ),
              },
              { title: "SHA-256", cell: (i) => <span class="mono" title={i.sha256}>{i.sha256.slice(0, 12)}…</span> },
              { title: "Uploaded", cell: (i) => <>{i.created_by}, {formatTime(i.created_at)}</> },
              { title: "Notes", cell: (i) => i.notes || "—" },
              {
                title: "",
                cell: (i) =>
                  isAdmin.value && (
                    <button
                      type="button"
                      onClick={() => confirm(`Delete firmware ${i.version}? A campaign's image cannot be deleted.`) && run(() => api(`/firmware/${i.id}`, { method: "DELETE" }), images.reload)}
                    >
                      Delete
                    </button>
                  ),
              },
            ]}
            rows={l}
            rowKey={(i) => i.id}
          />
        )}
      </LoadState>
    </Page>
  );
}

const CAMPAIGN_TONE: Record<Campaign["state"], string> = { running: "warn", paused: "bad", aborted: "bad", finished: "good" };

const DEVICE_STATES: [string, string][] = [
  ["pending", "muted"],
  ["active", "warn"],
  ["watching", "warn"],
  ["rolling_back", "warn"],
  ["succeeded", "good"],
  ["failed", "bad"],
  ["rolled_back", "bad"],
  ["skipped", "muted"],
];

function CampaignBadge({ campaign }: { campaign: Campaign }) {
  return <Badge tone={CAMPAIGN_TONE[campaign.state]}>{campaign.finished_at || campaign.state !== "aborted" ? campaign.state : "aborting"}</Badge>;
}

/** Devices per state as one bar, and the figures beside it. */
function StateCounts({ counts, total }: { counts: Record<string, number>; total: number }) {
  const whole = Math.max(total, 1);
  return (
    <div class="job-counts" data-testid="campaign-counts">
      <div class="progress-bar" role="img" aria-label="devices by state">
        {DEVICE_STATES.filter(([s]) => counts[s]).map(([s, tone]) => (
          <span class={`seg ${tone}`} style={{ width: `${(100 * counts[s]) / whole}%` }} title={`${s}: ${counts[s]}`} />
        ))}
      </div>
      <span class="count-list">
        {DEVICE_STATES.filter(([s]) => counts[s]).map(([s, tone]) => (
          <span>
            <Badge tone={tone}>{s.replace("_", " ")}</Badge> {formatNumber(counts[s])}
          </span>
        ))}
      </span>
    </div>
  );
}

const total = (c: Campaign) => c.waves.reduce((n, w) => n + w.size, 0);

/** The Campaigns screen. */
export function Campaigns() {
  const campaigns = useLoad((signal) => api<Campaign[]>("/campaigns", { signal }), []);
  useInterval(() => campaigns.data?.some((c) => !c.finished_at) && campaigns.reload(), 3000);
  return (
    <Page
      title="Campaigns"
      actions={
        isAdmin.value && (
          <a class="button primary" href="/campaigns/new">
            New campaign
          </a>
        )
      }
    >
      <LoadState loaded={campaigns} isEmpty={(l) => l.length === 0} empty="No campaigns yet. Upload an image, then roll it out here.">
        {(l) => (
          <Table
            testId="campaigns"
            columns={[
              { title: "Campaign", cell: (c) => <a href={`/campaigns/${c.id}`}>{c.name}</a> },
              { title: "Version", cell: (c) => c.version },
              { title: "State", cell: (c) => <CampaignBadge campaign={c} /> },
              { title: "Wave", cell: (c) => `${Math.min(c.current_wave + 1, c.waves.length)} of ${c.waves.length}` },
              { title: "Devices", cell: (c) => formatNumber(total(c)), class: "num" },
              { title: "Progress", cell: (c) => <StateCounts counts={c.counts} total={total(c)} /> },
              { title: "Started", cell: (c) => <>{c.created_by}, {formatTime(c.created_at)}</> },
            ]}
            rows={l}
            rowKey={(c) => c.id}
          />
        )}
      </LoadState>
    </Page>
  );
}

/** Cumulative percents from a list like "1, 10, 50, 100". */
function parseWaves(text: string): number[] | null {
  const parts = text.split(/[\s,]+/).filter(Boolean).map(Number);
  if (!parts.length || parts.some((p) => !(p > 0 && p <= 100))) return null;
  for (let i = 1; i < parts.length; i++) if (parts[i] <= parts[i - 1]) return null;
  return parts[parts.length - 1] === 100 ? parts : null;
}

/** A new campaign: target, waves, rules, a preview, then start. */
export function NewCampaign() {
  const { route } = useLocation();
  const images = useLoad((signal) => api<FirmwareImage[]>("/firmware", { signal }), []);
  const [v, setV] = useState<Record<string, string>>({
    name: "",
    image_id: "",
    label: "",
    current_version: "",
    waves: "1, 10, 50, 100",
    success: "95",
    soak: "600",
    threshold: "10",
    min_finished: "10",
    on_threshold: "pause",
    health: "600",
    window_start: "",
    window_end: "",
    time_zone: Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC",
    bandwidth: "",
  });
  const set = (k: string) => (e: Parameters<typeof valueOf>[0]) => {
    setV({ ...v, [k]: valueOf(e) });
    setPreview(null);
  };
  const [preview, setPreview] = useState<CampaignPreview | null>(null);
  const body = () => ({
    name: v.name.trim(),
    image_id: Number(v.image_id),
    filter: { label: v.label.trim() || null, current_version: v.current_version.trim() || null },
    waves: parseWaves(v.waves)!.map((percent) => ({
      percent,
      success_ratio: Number(v.success) / 100,
      soak_secs: Number(v.soak),
    })),
    failure_threshold: Number(v.threshold) / 100,
    min_finished: Number(v.min_finished),
    on_threshold: v.on_threshold,
    health_secs: Number(v.health),
    window_start: v.window_start || null,
    window_end: v.window_end || null,
    time_zone: v.time_zone.trim() || "UTC",
    max_bytes_per_sec: v.bandwidth ? Math.round(Number(v.bandwidth) * 1024) : 0,
  });
  const validate = () => ({
    name: v.name.trim() ? undefined : "required",
    image_id: v.image_id ? undefined : "choose an image",
    waves: parseWaves(v.waves) ? undefined : "rising percents ending at 100, e.g. 1, 10, 50, 100",
    threshold: Number(v.threshold) >= 0 && Number(v.threshold) <= 100 ? undefined : "0 to 100",
    success: Number(v.success) >= 0 && Number(v.success) <= 100 ? undefined : "0 to 100",
  });
  const previewForm = useForm(async () => setPreview(await api<CampaignPreview>("/campaigns/preview", { method: "POST", body: body() })), validate);
  const startForm = useForm(async () => {
    const c = await api<Campaign>("/campaigns", { method: "POST", body: body() });
    route(`/campaigns/${c.id}`);
  }, validate);
  const form = preview ? startForm : previewForm;
  return (
    <Page title="New campaign">
      <form onSubmit={form.submit} class="campaign-form card" data-testid="campaign-form">
        <div class="inline-fields">
          <Field label="Name" error={form.fieldError("name")}>
            <input name="name" value={v.name} onInput={set("name")} />
          </Field>
          <Field label="Image" error={form.fieldError("image_id")}>
            <select name="image_id" aria-label="image" value={v.image_id} onChange={set("image_id")}>
              <option value="">Choose…</option>
              {images.data?.map((i) => (
                <option value={String(i.id)}>
                  {i.version} ({i.file_name})
                </option>
              ))}
            </select>
          </Field>
          <Field label="Only devices labelled" error={form.fieldError("filter")}>
            <input name="label" placeholder="any" value={v.label} onInput={set("label")} />
          </Field>
          <Field label="Only devices on version" error={form.fieldError("filter")}>
            <input name="current_version" placeholder="any" value={v.current_version} onInput={set("current_version")} />
          </Field>
        </div>
        <div class="inline-fields">
          <Field label="Waves (cumulative %)" error={form.fieldError("waves")}>
            <input name="waves" value={v.waves} onInput={set("waves")} />
          </Field>
          <Field label="Each wave needs succeeded (%)" error={form.fieldError("success")}>
            <input name="success" inputMode="numeric" value={v.success} onInput={set("success")} />
          </Field>
          <Field label="Soak after each wave (s)">
            <input name="soak" inputMode="numeric" value={v.soak} onInput={set("soak")} />
          </Field>
          <Field label="Health watch (s)" hint="reboots, lost connections, alarms, silence" error={form.fieldError("health_secs")}>
            <input name="health" inputMode="numeric" value={v.health} onInput={set("health")} />
          </Field>
        </div>
        <div class="inline-fields">
          <Field label="Stop above failed (%)" error={form.fieldError("threshold") ?? form.fieldError("failure_threshold")}>
            <input name="threshold" inputMode="numeric" value={v.threshold} onInput={set("threshold")} />
          </Field>
          <Field label="…once finished" error={form.fieldError("min_finished")}>
            <input name="min_finished" inputMode="numeric" value={v.min_finished} onInput={set("min_finished")} />
          </Field>
          <Field label="Then">
            <select name="on_threshold" value={v.on_threshold} onChange={set("on_threshold")}>
              <option value="pause">pause</option>
              <option value="abort">abort</option>
            </select>
          </Field>
          <Field label="Window from" hint="local time, HH:MM" error={form.fieldError("window_start")}>
            <input name="window_start" placeholder="any time" value={v.window_start} onInput={set("window_start")} />
          </Field>
          <Field label="to" error={form.fieldError("window_end")}>
            <input name="window_end" placeholder="" value={v.window_end} onInput={set("window_end")} />
          </Field>
          <Field label="Time zone" error={form.fieldError("time_zone")}>
            <input name="time_zone" value={v.time_zone} onInput={set("time_zone")} />
          </Field>
          <Field label="Download limit (KiB/s)" hint="per device; empty for none">
            <input name="bandwidth" inputMode="numeric" value={v.bandwidth} onInput={set("bandwidth")} />
          </Field>
        </div>
        {preview && (
          <div class="preview" data-testid="campaign-preview">
            <p>
              <strong>{formatNumber(preview.targeted)}</strong> device(s) in waves of{" "}
              <strong>{preview.wave_sizes.map((n) => formatNumber(n)).join(" → ")}</strong>. Left out:{" "}
              {formatNumber(preview.already_on_version)} already on the version, {formatNumber(preview.below_min_version)} below its
              minimum, {formatNumber(preview.in_other_campaign)} in another campaign.
            </p>
            {preview.sample.length > 0 && (
              <Table
                testId="preview-sample"
                columns={[
                  { title: "Device", cell: (d) => <a href={`/devices/${d.id}`}>{d.name}</a> },
                  { title: "Runs", cell: (d) => d.firmware_version ?? "unknown" },
                  { title: "Wave", cell: (d) => d.wave + 1, class: "num" },
                ]}
                rows={preview.sample}
                rowKey={(d) => d.id}
              />
            )}
          </div>
        )}
        <FormError form={form} />
        <div class="buttons">
          <button type="submit" class="primary" disabled={form.busy || (!!preview && preview.targeted === 0)}>
            {preview ? `Start on ${formatNumber(preview.targeted)} device(s)` : "Preview"}
          </button>
        </div>
      </form>
    </Page>
  );
}

/** Finished devices over time, as lines that only rise. */
function ProgressChart({ id, campaign }: { id: number; campaign: Campaign }) {
  const progress = useLoad((signal) => api<CampaignProgress[]>(`/campaigns/${id}/progress`, { signal }), [id, campaign.updated_at, Object.values(campaign.counts).join()]);
  const points = progress.data ?? [];
  const data: ChartData = [
    [campaign.created_at / 1000, ...points.map((p) => p.at / 1000)],
    [0, ...points.map((p) => p.succeeded)],
    [0, ...points.map((p) => p.failed + p.rolled_back)],
    [0, ...points.map((p) => p.skipped)],
  ];
  return (
    <TimeChart
      testId="campaign-progress"
      title="Devices finished"
      lines={[
        { label: "succeeded", color: "#1a7f37" },
        { label: "failed or rolled back", color: "#cf222e" },
        { label: "skipped", color: "#8c959f" },
      ]}
      data={data}
      height={180}
      xRange={[campaign.created_at, campaign.finished_at ?? Date.now()]}
    />
  );
}

const STAGE_TONE: Record<string, string> = {
  succeeded: "good",
  failed: "bad",
  rolled_back: "bad",
  skipped: "muted",
  pending: "muted",
  notified: "muted",
};

/** One campaign, followed live. */
export function CampaignDetail() {
  const { params } = useRoute();
  const id = Number(params.id);
  const campaign = useLoad((signal) => api<Campaign>(`/campaigns/${id}`, { signal }), [id]);
  const [stage, setStage] = useState("");
  const devices = useLoad(
    (signal) => api<CampaignDevice[]>(`/campaigns/${id}/devices`, { signal, query: { state: stage || undefined, limit: 200 } }),
    [id, stage],
  );
  const { error, run } = useAction();
  const open = !!campaign.data && !campaign.data.finished_at;
  useInterval(() => {
    if (!open) return;
    campaign.reload();
    devices.reload();
  }, 2000);
  const control = (action: string, question?: string) =>
    (!question || confirm(question)) && run(() => api(`/campaigns/${id}/${action}`, { method: "POST" }), () => {
      campaign.reload();
      devices.reload();
    });
  return (
    <LoadState loaded={campaign}>
      {(c) => (
        <Page
          title={`Campaign: ${c.name}`}
          actions={
            <>
              <CampaignBadge campaign={c} />
              {isAdmin.value && c.state === "running" && (
                <button type="button" onClick={() => control("pause")}>
                  Pause
                </button>
              )}
              {isAdmin.value && c.state === "paused" && (
                <button type="button" class="primary" onClick={() => control("resume", "Resume? The failures so far are accepted; new ones count towards the threshold again.")}>
                  Resume
                </button>
              )}
              {isAdmin.value && (c.state === "running" || c.state === "paused") && (
                <button type="button" class="danger" onClick={() => control("abort", "Abort the campaign? Devices not yet notified are skipped; those updating finish.")}>
                  Abort
                </button>
              )}
            </>
          }
        >
          {error && <ErrorBox error={error} />}
          {c.state_reason && (
            <p class={c.state === "paused" || c.state === "aborted" ? "notice bad" : "notice"} data-testid="campaign-reason">
              {c.state_reason}
            </p>
          )}
          <dl class="identity card">
            <div>
              <dt>Image</dt>
              <dd>{c.version}</dd>
            </div>
            <div>
              <dt>Target</dt>
              <dd>
                {[c.filter.label && `label ${c.filter.label}`, c.filter.current_version && `on ${c.filter.current_version}`].filter(Boolean).join(", ") || "every device of the model"}
              </dd>
            </div>
            <div>
              <dt>Stops itself</dt>
              <dd>
                {c.on_threshold} above {formatNumber(c.failure_threshold * 100, 1)} % failed, after {c.min_finished} finished
              </dd>
            </div>
            <div>
              <dt>Health watch</dt>
              <dd>{c.health_secs} s{c.rollback_unhealthy ? ", unhealthy devices rolled back" : ""}</dd>
            </div>
            <div>
              <dt>Window</dt>
              <dd>{c.window_start ? `${c.window_start}–${c.window_end} ${c.time_zone}` : "any time"}</dd>
            </div>
            <div>
              <dt>Started</dt>
              <dd>
                {c.created_by}, <Time ms={c.created_at} />
              </dd>
            </div>
            <div>
              <dt>Finished</dt>
              <dd>{c.finished_at ? <Time ms={c.finished_at} /> : "not yet"}</dd>
            </div>
          </dl>
          <StateCounts counts={c.counts} total={total(c)} />
          <ProgressChart id={id} campaign={c} />
          <Table
            testId="campaign-waves"
            columns={[
              { title: "Wave", cell: (w) => w.number + 1 },
              { title: "Devices", cell: (w) => formatNumber(w.size), class: "num" },
              { title: "State", cell: (w) => <Badge tone={w.state === "done" ? "good" : w.state === "waiting" ? "muted" : "warn"}>{w.state}</Badge> },
              { title: "Needs", cell: (w) => `${formatNumber(w.success_ratio * 100, 0)} % succeeded, then ${w.soak_secs} s` },
              { title: "Progress", cell: (w) => <StateCounts counts={w.counts} total={w.size} /> },
              { title: "Started", cell: (w) => formatTime(w.started_at) },
              { title: "Done", cell: (w) => formatTime(w.done_at) },
            ]}
            rows={c.waves}
            rowKey={(w) => w.number}
          />
          <div class="filters">
            <select aria-label="device state" value={stage} onChange={(e) => setStage(valueOf(e))}>
              <option value="">Every device</option>
              {DEVICE_STATES.map(([s]) => (
                <option value={s}>{s.replace("_", " ")}</option>
              ))}
            </select>
          </div>
          <LoadState loaded={devices} isEmpty={(l) => l.length === 0} empty="No device in this state.">
            {(l) => (
              <Table
                testId="campaign-devices"
                columns={[
                  { title: "Device", cell: (d) => <a href={`/devices/${d.device_id}`}>{d.device_name}</a> },
                  { title: "Wave", cell: (d) => d.wave + 1, class: "num" },
                  { title: "From", cell: (d) => d.from_version ?? "—" },
                  {
                    title: "Stage",
                    cell: (d) => (
                      <Badge tone={STAGE_TONE[d.stage] ?? "warn"}>
                        {d.stage.replace("_", " ")}
                        {d.progress !== null && d.stage === "downloading" ? ` ${d.progress} %` : ""}
                      </Badge>
                    ),
                  },
                  { title: "Reason", cell: (d) => d.reason ?? "" },
                  { title: "Since", cell: (d) => formatTime(d.updated_at) },
                ]}
                rows={l}
                rowKey={(d) => d.device_id}
              />
            )}
          </LoadState>
        </Page>
      )}
    </LoadState>
  );
}

/** A device's firmware history: every campaign that took it along. */
export function DeviceFirmware({ deviceId }: { deviceId: number }) {
  const history = useLoad((signal) => api<FirmwareHistory[]>(`/devices/${deviceId}/firmware`, { signal }), [deviceId]);
  return (
    <LoadState loaded={history} isEmpty={(l) => l.length === 0} empty="No campaign has updated this device yet.">
      {(l) => (
        <Table
          testId="firmware-history"
          columns={[
            { title: "When", cell: (h) => <Time ms={h.updated_at} /> },
            { title: "Campaign", cell: (h) => <a href={`/campaigns/${h.campaign_id}`}>{h.campaign_name}</a> },
            { title: "From → to", cell: (h) => `${h.from_version ?? "unknown"} → ${h.version}` },
            { title: "Outcome", cell: (h) => <Badge tone={STAGE_TONE[h.state] ?? "warn"}>{h.state.replace("_", " ")}</Badge> },
            { title: "Reason", cell: (h) => h.reason ?? "" },
          ]}
          rows={l}
          rowKey={(h) => `${h.campaign_id}`}
        />
      )}
    </LoadState>
  );
}
