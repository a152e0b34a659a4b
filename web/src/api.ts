// The console's only door to the server: same-origin fetches under /api/v1,
// the session cookie, the CSRF token on unsafe methods, and problem+json
// errors turned into ApiError with the server's words and field errors.

export interface FieldError {
  field: string;
  message: string;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly detail: string,
    readonly errors: FieldError[] = [],
  ) {
    super(detail);
  }
  /** The server's message for one form field, if it named it. */
  fieldMessage(field: string): string | undefined {
    return this.errors.find((e) => e.field === field)?.message;
  }
}

let csrfToken: string | null = null;
let onUnauthenticated: () => void = () => {};

export function setCsrfToken(token: string | null) {
  csrfToken = token;
}

/** Called when the session ends under the console (expired, logged out elsewhere). */
export function whenUnauthenticated(handler: () => void) {
  onUnauthenticated = handler;
}

export type Query = Record<string, string | number | boolean | null | undefined>;

export function withQuery(path: string, query?: Query): string {
  if (!query) return path;
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== "") params.set(k, String(v));
  }
  const s = params.toString();
  return s ? `${path}?${s}` : path;
}

export interface RequestOptions {
  method?: "GET" | "POST" | "PUT" | "DELETE";
  query?: Query;
  /** JSON-encoded unless it is already a string or a Blob (then `contentType` says what). */
  body?: unknown;
  contentType?: string;
  signal?: AbortSignal;
}

export async function problemOf(response: Response): Promise<ApiError> {
  const text = await response.text();
  try {
    const p = JSON.parse(text);
    return new ApiError(response.status, p.detail || p.title || response.statusText, p.errors ?? []);
  } catch {
    return new ApiError(response.status, text || `${response.status} ${response.statusText}`);
  }
}

export function headersFor(method: string, contentType?: string): Record<string, string> {
  const headers: Record<string, string> = { accept: "application/json, application/problem+json" };
  if (contentType) headers["content-type"] = contentType;
  if (method !== "GET" && csrfToken) headers["x-csrf-token"] = csrfToken;
  return headers;
}

export async function api<T>(path: string, options: RequestOptions = {}): Promise<T> {
  const method = options.method ?? "GET";
  let body: BodyInit | undefined;
  let contentType = options.contentType;
  if (options.body !== undefined) {
    if (typeof options.body === "string" || options.body instanceof Blob) {
      body = options.body;
    } else {
      body = JSON.stringify(options.body);
      contentType ??= "application/json";
    }
  }
  let response: Response;
  try {
    response = await fetch(withQuery(`/api/v1${path}`, options.query), {
      method,
      body,
      headers: headersFor(method, contentType),
      credentials: "same-origin",
      signal: options.signal,
    });
  } catch (e) {
    if ((e as Error).name === "AbortError") throw e;
    throw new ApiError(0, "The server cannot be reached. Check the connection and try again.");
  }
  if (!response.ok) {
    const error = await problemOf(response);
    if (response.status === 401 && path !== "/session") onUnauthenticated();
    throw error;
  }
  if (response.status === 204) return undefined as T;
  return (await response.json()) as T;
}

/** Posts a file with upload progress (fetch has none), answering like `api`. */
export function uploadWithProgress<T>(
  path: string,
  file: Blob,
  contentType: string,
  onProgress: (fraction: number) => void,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/v1${path}`);
    for (const [k, v] of Object.entries(headersFor("POST", contentType))) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onerror = () => reject(new Error("The upload failed: the server cannot be reached."));
    xhr.onload = async () => {
      const response = new Response(xhr.responseText, {
        status: xhr.status,
        headers: { "content-type": xhr.getResponseHeader("content-type") ?? "" },
      });
      if (xhr.status >= 200 && xhr.status < 300) resolve((await response.json()) as T);
      else reject(await problemOf(response));
    };
    xhr.send(file);
  });
}

// ---- the API's types (see /api/openapi.json) ----

export type Role = "operator-admin" | "integrator-admin" | "customer-admin" | "engineer" | "viewer";

export interface Session {
  user_id: number;
  username: string;
  role: Role;
  organisation_id: number;
  csrf_token?: string | null;
}

export interface Organisation {
  id: number;
  parent_id: number | null;
  kind: "operator" | "integrator" | "customer";
  name: string;
  created_at: number;
}

export interface DeviceModel {
  id: number;
  name: string;
  vendor: string;
  hardware_revision: string;
  topic_segment: string;
  description: string;
}

export interface Device {
  id: number;
  organisation_id: number;
  model_id: number;
  name: string;
  serial: string;
  mac: string;
  imei: string | null;
  iccid: string | null;
  labels: string[];
  license_state: string;
  firmware_version: string | null;
  created_at: number;
  last_seen_at: number | null;
  online: boolean;
}

export interface DevicePage {
  devices: Device[];
  next_cursor: string | null;
}

export interface Counter {
  value: number;
  week_ago: number | null;
  change: number | null;
}

export interface Statistics {
  devices: Counter;
  online_devices: Counter;
  users: Counter;
  system_integrators: Counter;
  business_customers: Counter;
  license_keys: Counter;
}

export interface DailyCounters {
  day: number;
  devices: number;
  online_devices: number;
  users: number;
  system_integrators: number;
  business_customers: number;
  license_keys: number;
}

export interface Rejection {
  line: number;
  reason: string;
}

export interface ImportRecord {
  id: number;
  kind: string;
  organisation_id: number;
  actor: string;
  source_name: string;
  partial: boolean;
  rows_accepted: number;
  rows_rejected: number;
  created_at: number;
  rejections: Rejection[];
}

export interface User {
  id: number;
  organisation_id: number;
  username: string;
  role: Role;
  disabled: boolean;
  created_at: number;
}

export interface ServiceModel {
  id: number;
  name: string;
  features: string[];
  duration_days: number;
}

export interface LicenseKey {
  id: number;
  key: string;
  organisation_id: number;
  service_model_id: number;
  state: string;
  device_id: number | null;
  created_at: number;
  bound_at: number | null;
  expires_at: number | null;
}

export interface AuditEntry {
  id: number;
  organisation_id: number;
  actor: string;
  action: string;
  target: string;
  before: string | null;
  after: string | null;
  address: string | null;
  created_at: number;
}

export interface LatestReading {
  metric: string;
  ts: number;
  value: number;
}

export interface SeriesPoint {
  ts: number;
  min: number;
  max: number;
  mean: number;
  count: number;
}

export interface Series {
  metric: string;
  from: number;
  to: number;
  step: number;
  points: SeriesPoint[];
}

export interface LogLine {
  id: number;
  stream: "syslog" | "dmesg";
  ts: number;
  line: string;
}

export interface TelemetryFaults {
  count: number;
  last_error: string | null;
  last_at: number | null;
}

export interface PresenceChange {
  id: number;
  online: boolean;
  at: number;
}

export interface AlarmRule {
  id: number;
  organisation_id: number;
  model_id: number | null;
  name: string;
  kind: "threshold" | "offline" | "firmware";
  metric: string | null;
  comparison: string | null;
  threshold: number | null;
  duration_secs: number;
  expected_firmware: string | null;
  severity: string;
  enabled: boolean;
  created_at: number;
}

export interface Alarm {
  id: number;
  rule_id: number;
  device_id: number;
  device_name?: string;
  organisation_id: number;
  state: "active" | "acknowledged" | "cleared";
  severity: string;
  message: string;
  value: number | null;
  raised_at: number;
  acknowledged_at: number | null;
  acknowledged_by: string | null;
  cleared_at: number | null;
}

export interface Webhook {
  id: number;
  organisation_id: number;
  url: string;
  secret?: string | null;
  created_at: number;
}

export interface ApiToken {
  id: number;
  name: string;
  revoked: boolean;
  created_at: number;
  /** When it stops working (ms); null: until revoked. */
  expires_at: number | null;
  token?: string | null;
}

export type ExecutionState =
  | "queued"
  | "sent"
  | "in_progress"
  | "succeeded"
  | "failed"
  | "rejected"
  | "timed_out"
  | "cancelled";

export interface Execution {
  id: number;
  job_id: number;
  device_id: number;
  device_name: string;
  device_mac: string;
  type: string;
  state: ExecutionState;
  attempt: number;
  progress: number | null;
  message: string | null;
  result: Record<string, unknown> | null;
  error: string | null;
  queued_at: number;
  sent_at: number | null;
  started_at: number | null;
  finished_at: number | null;
  deadline: number;
}

export interface Job {
  id: number;
  organisation_id: number;
  type: string;
  params: Record<string, unknown>;
  description: string;
  created_by: string;
  created_at: number;
  state: "running" | "finished" | "cancelled" | "aborted";
  finished_at: number | null;
  total: number;
  timeout_secs: number;
  expires_at: number;
  max_retries: number;
  retry_backoff_secs: number;
  rollout_per_minute: number | null;
  abort_failure_ratio: number | null;
  abort_min_finished: number | null;
  counts: Partial<Record<ExecutionState, number>>;
}

export interface RadioState {
  technology: string | null;
  band: string | null;
  carrier_aggregation: { band: string; pci: number | null; rsrp_dbm: number | null }[];
  operator: string | null;
  cell_id: number | null;
  smcc: number | null;
  smnc: number | null;
  source: "telemetry" | "modem_status";
  updated_at: number;
}

export interface RadioChange {
  id: number;
  at: number;
  kind: string;
  before: string | null;
  after: string | null;
}

export interface Radio {
  state: RadioState | null;
  changes: RadioChange[];
}

// ---- firmware over the air ----

export interface FirmwareImage {
  id: number;
  organisation_id: number;
  version: string;
  min_version: string | null;
  notes: string;
  file_name: string;
  size: number;
  sha256: string;
  sha1: string;
  md5: string;
  signature: string;
  signed_by: string;
  model_ids: number[];
  created_by: string;
  created_at: number;
}

export type CampaignState = "running" | "paused" | "aborted" | "finished";

export interface CampaignWave {
  number: number;
  size: number;
  success_ratio: number;
  soak_secs: number;
  state: "waiting" | "running" | "soaking" | "done";
  started_at: number | null;
  settled_at: number | null;
  done_at: number | null;
  counts: Record<string, number>;
}

export interface Campaign {
  id: number;
  organisation_id: number;
  name: string;
  image_id: number;
  version: string;
  model_id: number;
  filter: { organisation_id?: number | null; label?: string | null; current_version?: string | null };
  state: CampaignState;
  state_reason: string | null;
  current_wave: number;
  failure_threshold: number;
  min_finished: number;
  on_threshold: "pause" | "abort";
  health_secs: number;
  rollback_unhealthy: boolean;
  window_start: string | null;
  window_end: string | null;
  time_zone: string;
  device_timeout_secs: number;
  device_wait_secs: number;
  max_bytes_per_sec: number;
  created_by: string;
  created_at: number;
  updated_at: number;
  finished_at: number | null;
  counts: Record<string, number>;
  waves: CampaignWave[];
}

export interface CampaignDevice {
  device_id: number;
  device_name: string;
  device_mac: string;
  wave: number;
  stage: string;
  progress: number | null;
  from_version: string | null;
  reason: string | null;
  execution_id: number | null;
  updated_at: number;
}

export interface CampaignPreview {
  targeted: number;
  wave_sizes: number[];
  already_on_version: number;
  below_min_version: number;
  in_other_campaign: number;
  sample: { id: number; name: string; firmware_version: string | null; wave: number }[];
}

export interface CampaignProgress {
  at: number;
  succeeded: number;
  failed: number;
  rolled_back: number;
  skipped: number;
}

export interface FirmwareHistory {
  campaign_id: number;
  campaign_name: string;
  image_id: number;
  version: string;
  from_version: string | null;
  state: string;
  reason: string | null;
  updated_at: number;
}
