import { useState } from "preact/hooks";
import { api, type Device, type DevicePage, type ImportRecord, type LicenseKey, type ServiceModel } from "../api";
import { isOperator, organisationName, organisations, session } from "../session";
import {
  Badge,
  ErrorBox,
  Field,
  FormError,
  LoadState,
  Modal,
  Page,
  Table,
  formatTime,
  useDebounced,
  useForm,
  useLoad,
  valueOf,
  DialogButtons,
  useCursorPages,
  nextId,
  useAction,
} from "../components/ui";
import { ImportReport } from "./imports";

const KEY_STATES = ["available", "bound", "deployed", "expired", "revoked"];
const KEY_TONE: Record<string, string> = { available: "muted", bound: "good", deployed: "good", expired: "bad", revoked: "bad" };
const PAGE = 50;

function useServiceModels() {
  return useLoad((signal) => api<ServiceModel[]>("/service-models", { signal }), []);
}

export function LicenseKeys() {
  const [state, setState] = useState("");
  const { cursor: afterId, pager } = useCursorPages<number>(state);
  const keys = useLoad(
    (signal) =>
      api<LicenseKey[]>("/license-keys", { query: { state, after_id: afterId ?? undefined, limit: PAGE }, signal }),
    [state, afterId],
  );
  const services = useServiceModels();
  const serviceName = (id: number) => services.data?.find((s) => s.id === id)?.name ?? `#${id}`;
  const [dialog, setDialog] = useState<"generate" | "import" | { bind: LicenseKey } | null>(null);
  const { error, run } = useAction();
  const act = (path: string) => run(() => api(path, { method: "POST" }), keys.reload);
  return (
    <Page
      title="License keys"
      actions={
        <>
          <button type="button" class="primary" onClick={() => setDialog("generate")}>
            Generate keys
          </button>
          <button type="button" onClick={() => setDialog("import")}>
            Import keys
          </button>
        </>
      }
    >
      <div class="filters">
        <select aria-label="key state" value={state} onChange={(e) => setState(valueOf(e))}>
          <option value="">Any state</option>
          {KEY_STATES.map((s) => (
            <option value={s}>{s}</option>
          ))}
        </select>
      </div>
      {error != null && <ErrorBox error={error} />}
      <LoadState loaded={keys} empty={state ? `No ${state} keys.` : "No license keys yet: generate or import them."}>
        {(list) => (
          <>
            <Table
              testId="license-keys"
              columns={[
                { title: "Key", cell: (k: LicenseKey) => <code>{k.key}</code> },
                { title: "Service model", cell: (k) => serviceName(k.service_model_id) },
                { title: "Organisation", cell: (k) => organisationName(k.organisation_id) },
                { title: "State", cell: (k) => <Badge tone={KEY_TONE[k.state] ?? "muted"}>{k.state}</Badge> },
                { title: "Device", cell: (k) => (k.device_id ? <a href={`/devices/${k.device_id}`}>device {k.device_id}</a> : "—") },
                { title: "Bound", cell: (k) => formatTime(k.bound_at) },
                { title: "Expires", cell: (k) => formatTime(k.expires_at) },
                {
                  title: "",
                  cell: (k) => (
                    <span class="row-actions">
                      {k.state === "available" && (
                        <button type="button" onClick={() => setDialog({ bind: k })}>
                          Bind…
                        </button>
                      )}
                      {(k.state === "bound" || k.state === "deployed") && (
                        <button
                          type="button"
                          title="Send the signed token to the device, which verifies and keeps it"
                          onClick={() => act(`/license-keys/${k.id}/deploy`)}
                        >
                          {k.state === "deployed" ? "Deploy again" : "Deploy"}
                        </button>
                      )}
                      {k.state === "bound" && (
                        <button type="button" onClick={() => act(`/license-keys/${k.id}/unbind`)}>
                          Unbind
                        </button>
                      )}
                      {k.state !== "revoked" && (
                        <button
                          type="button"
                          class="danger"
                          onClick={() =>
                            confirm(`Revoke ${k.key}? A revoked key can never be used again.`) &&
                            act(`/license-keys/${k.id}/revoke`)
                          }
                        >
                          Revoke
                        </button>
                      )}
                    </span>
                  ),
                },
              ]}
              rows={list}
              rowKey={(k) => k.id}
            />
            {pager(nextId(list, PAGE))}
          </>
        )}
      </LoadState>
      {dialog === "generate" && (
        <GenerateDialog
          services={services.data ?? []}
          onClose={() => setDialog(null)}
          onDone={() => {
            setDialog(null);
            keys.reload();
          }}
        />
      )}
      {dialog === "import" && <ImportKeysDialog services={services.data ?? []} onClose={() => setDialog(null)} onDone={keys.reload} />}
      {dialog && typeof dialog === "object" && (
        <BindKeyDialog
          licenseKey={dialog.bind}
          onClose={() => setDialog(null)}
          onDone={() => {
            setDialog(null);
            keys.reload();
          }}
        />
      )}
    </Page>
  );
}

function OrganisationAndService({
  services,
  organisationId,
  serviceId,
  setOrganisationId,
  setServiceId,
  fieldError,
}: {
  services: ServiceModel[];
  organisationId: string;
  serviceId: string;
  setOrganisationId: (v: string) => void;
  setServiceId: (v: string) => void;
  fieldError: (f: string) => string | undefined;
}) {
  return (
    <>
      <Field label="For organisation" error={fieldError("organisation_id")}>
        <select name="organisation_id" value={organisationId} onChange={(e) => setOrganisationId(valueOf(e))}>
          {organisations.value.map((o) => (
            <option value={o.id}>
              {o.name} ({o.kind})
            </option>
          ))}
        </select>
      </Field>
      <Field label="Service model" error={fieldError("service_model_id")}>
        <select name="service_model_id" value={serviceId} onChange={(e) => setServiceId(valueOf(e))}>
          <option value="">Choose…</option>
          {services.map((s) => (
            <option value={s.id}>
              {s.name} ({s.duration_days} days)
            </option>
          ))}
        </select>
      </Field>
    </>
  );
}

function GenerateDialog({ services, onClose, onDone }: { services: ServiceModel[]; onClose: () => void; onDone: () => void }) {
  const [organisationId, setOrganisationId] = useState(String(session.value?.organisation_id ?? ""));
  const [serviceId, setServiceId] = useState("");
  const [count, setCount] = useState("10");
  const form = useForm(
    async () => {
      await api("/license-keys", {
        method: "POST",
        body: { organisation_id: Number(organisationId), service_model_id: Number(serviceId), count: Number(count) },
      });
      onDone();
    },
    () => ({
      service_model_id: serviceId ? undefined : "Choose a service model.",
      count: /^\d+$/.test(count) && Number(count) >= 1 && Number(count) <= 10000 ? undefined : "1 to 10,000 keys.",
    }),
  );
  return (
    <Modal title="Generate license keys" onClose={onClose}>
      <form onSubmit={form.submit} noValidate>
        <OrganisationAndService
          services={services}
          organisationId={organisationId}
          serviceId={serviceId}
          setOrganisationId={setOrganisationId}
          setServiceId={setServiceId}
          fieldError={form.fieldError}
        />
        <Field label="How many" error={form.fieldError("count")}>
          <input name="count" inputMode="numeric" value={count} onInput={(e) => setCount(valueOf(e))} />
        </Field>
        <FormError form={form} />
        <DialogButtons onCancel={onClose} busy={form.busy} label="Generate" />
      </form>
    </Modal>
  );
}

function ImportKeysDialog({ services, onClose, onDone }: { services: ServiceModel[]; onClose: () => void; onDone: () => void }) {
  const [organisationId, setOrganisationId] = useState(String(session.value?.organisation_id ?? ""));
  const [serviceId, setServiceId] = useState("");
  const [text, setText] = useState("");
  const [partial, setPartial] = useState(false);
  const [record, setRecord] = useState<ImportRecord | null>(null);
  const form = useForm(
    async () => {
      const csv = text.trim().toLowerCase().startsWith("key") ? text : `key\n${text}`;
      setRecord(
        await api<ImportRecord>("/license-keys/import", {
          method: "POST",
          query: { organisation_id: organisationId, service_model_id: serviceId, partial, source: "console" },
          body: csv,
          contentType: "text/csv",
        }),
      );
      onDone();
    },
    () => ({
      service_model_id: serviceId ? undefined : "Choose a service model.",
      keys: text.trim() ? undefined : "Paste the keys, one per line.",
    }),
  );
  return (
    <Modal title="Import license keys" onClose={onClose}>
      {record ? (
        <>
          <ImportReport record={record} />
          <footer>
            <button type="button" class="primary" onClick={onClose}>
              Done
            </button>
          </footer>
        </>
      ) : (
        <form onSubmit={form.submit} noValidate>
          <OrganisationAndService
            services={services}
            organisationId={organisationId}
            serviceId={serviceId}
            setOrganisationId={setOrganisationId}
            setServiceId={setServiceId}
            fieldError={form.fieldError}
          />
          <Field label="Keys from the ERP, one per line" error={form.fieldError("keys")}>
            <textarea name="keys" rows={8} value={text} onInput={(e) => setText(valueOf(e))} />
          </Field>
          <label class="check-line">
            <input type="checkbox" checked={partial} onChange={(e) => setPartial(e.currentTarget.checked)} /> Import the
            good keys even if some are rejected
          </label>
          <FormError form={form} />
          <DialogButtons onCancel={onClose} busy={form.busy} label="Import" />
        </form>
      )}
    </Modal>
  );
}

/** Finds a device by name, serial or MAC as the operator types. */
export function DevicePicker({ onPick, picked }: { onPick: (d: Device) => void; picked: Device | null }) {
  const [text, setText] = useState("");
  const search = useDebounced(text, 200);
  const found = useLoad(
    (signal) =>
      search.trim()
        ? api<DevicePage>("/devices", { query: { search: search.trim(), limit: 8 }, signal }).then((p) => p.devices)
        : Promise.resolve([] as Device[]),
    [search],
  );
  return (
    <div class="picker">
      <input
        type="search"
        aria-label="find a device"
        placeholder="Device name, serial or MAC"
        value={text}
        onInput={(e) => setText(valueOf(e))}
      />
      <ul role="listbox">
        {(found.data ?? []).map((d) => (
          <li role="option" aria-selected={picked?.id === d.id} class={picked?.id === d.id ? "active" : undefined} onClick={() => onPick(d)}>
            {d.name} <span class="muted mono">{d.serial} · {d.mac} · {d.license_state}</span>
          </li>
        ))}
      </ul>
    </div>
  );
}

function BindKeyDialog({ licenseKey, onClose, onDone }: { licenseKey: LicenseKey; onClose: () => void; onDone: () => void }) {
  const [device, setDevice] = useState<Device | null>(null);
  const form = useForm(
    async () => {
      await api(`/license-keys/${licenseKey.id}/bind`, { method: "POST", body: { device_id: device!.id } });
      onDone();
    },
    () => ({ device_id: device ? undefined : "Choose the device." }),
  );
  return (
    <Modal title={`Bind ${licenseKey.key}`} onClose={onClose}>
      <form onSubmit={form.submit} noValidate>
        <Field label="Device" error={form.fieldError("device_id")}>
          <DevicePicker picked={device} onPick={setDevice} />
        </Field>
        <FormError form={form} />
        <DialogButtons onCancel={onClose} busy={form.busy} label={device ? `Bind to ${device.name}` : "Bind"} />
      </form>
    </Modal>
  );
}

export function ServiceModels() {
  const services = useServiceModels();
  const [creating, setCreating] = useState(false);
  return (
    <Page
      title="Service models"
      actions={
        isOperator.value && (
          <button type="button" class="primary" onClick={() => setCreating(true)}>
            New service model
          </button>
        )
      }
    >
      <LoadState loaded={services} empty="No service models yet.">
        {(list) => (
          <Table
            testId="service-models"
            columns={[
              { title: "Name", cell: (s: ServiceModel) => s.name },
              { title: "Duration", cell: (s) => `${s.duration_days} days` },
              { title: "Features", cell: (s) => (s.features.length ? s.features.map((f) => <span class="chip">{f}</span>) : "—") },
            ]}
            rows={list}
            rowKey={(s) => s.id}
          />
        )}
      </LoadState>
      {creating && (
        <ServiceModelDialog
          onClose={() => setCreating(false)}
          onDone={() => {
            setCreating(false);
            services.reload();
          }}
        />
      )}
    </Page>
  );
}

function ServiceModelDialog({ onClose, onDone }: { onClose: () => void; onDone: () => void }) {
  const [name, setName] = useState("");
  const [days, setDays] = useState("365");
  const [features, setFeatures] = useState("");
  const form = useForm(
    async () => {
      await api("/service-models", {
        method: "POST",
        body: {
          name: name.trim(),
          duration_days: Number(days),
          features: features.split(",").map((f) => f.trim()).filter(Boolean),
        },
      });
      onDone();
    },
    () => ({
      name: name.trim() ? undefined : "Name the service model.",
      duration_days: /^\d+$/.test(days) && Number(days) >= 1 && Number(days) <= 36500 ? undefined : "1 to 36,500 days.",
    }),
  );
  return (
    <Modal title="New service model" onClose={onClose}>
      <form onSubmit={form.submit} noValidate>
        <Field label="Name" error={form.fieldError("name")}>
          <input name="name" value={name} onInput={(e) => setName(valueOf(e))} autofocus />
        </Field>
        <Field label="Duration (days)" error={form.fieldError("duration_days")}>
          <input name="duration_days" inputMode="numeric" value={days} onInput={(e) => setDays(valueOf(e))} />
        </Field>
        <Field label="Features" error={form.fieldError("features")} hint="comma-separated, e.g. monitoring, fota, terminal">
          <input name="features" value={features} onInput={(e) => setFeatures(valueOf(e))} />
        </Field>
        <FormError form={form} />
        <DialogButtons onCancel={onClose} busy={form.busy} label="Create" />
      </form>
    </Modal>
  );
}
