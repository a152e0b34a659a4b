import { useEffect, useState } from "preact/hooks";
import { useLocation } from "preact-iso";
import { api, type Device, type DevicePage, type LicenseKey, type ServiceModel } from "../api";
import { canRunTasks, deviceModels, isAdmin, modelName, organisationName, organisations } from "../session";
import { BulkTaskDialog } from "./tasks";
import {
  Badge,
  Field,
  FormError,
  LoadState,
  Modal,
  OnlineBadge,
  Page,
  Table,
  Time,
  useDebounced,
  useForm,
  useLoad,
  valueOf,
  type Column,
  DialogButtons,
  useCursorPages,
} from "../components/ui";

export const LICENSE_STATES = ["unlicensed", "bound", "deployed", "expired", "revoked"];
const SORTS: [string, string][] = [
  ["name", "Name A–Z"],
  ["-name", "Name Z–A"],
  ["serial", "Serial number"],
  ["-last_seen", "Last seen, newest"],
  ["last_seen", "Last seen, oldest"],
  ["id", "Imported, oldest"],
  ["-id", "Imported, newest"],
];
const PAGE_SIZE = 50;

export function licenseTone(state: string): string {
  return { bound: "good", deployed: "good", expired: "bad", revoked: "bad" }[state] ?? "muted";
}

export function Devices() {
  const { query, path, route } = useLocation();
  const filters = {
    search: query.search ?? "",
    model_id: query.model_id ?? "",
    organisation_id: query.organisation_id ?? "",
    license_state: query.license_state ?? "",
    online: query.online ?? "",
    label: query.label ?? "",
    sort: query.sort ?? "name",
  };
  const setFilter = (key: keyof typeof filters, value: string) => {
    const next = new URLSearchParams({ ...filters, [key]: value });
    for (const [k, v] of [...next.entries()]) if (!v || (k === "sort" && v === "name")) next.delete(k);
    const s = next.toString();
    route(s ? `${path}?${s}` : path, true);
  };
  const [searchText, setSearchText] = useState(filters.search);
  const search = useDebounced(searchText, 250);
  useEffect(() => {
    if (search !== filters.search) setFilter("search", search);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [search]);

  const filterKey = JSON.stringify(filters);
  const { cursor: after, pager } = useCursorPages<string>(filterKey);
  const page = useLoad(
    (signal) =>
      api<DevicePage>("/devices", {
        query: { ...filters, after: after ?? undefined, limit: PAGE_SIZE },
        signal,
      }),
    [filterKey, after],
  );
  useEffect(() => {
    if (page.data) performance.mark("telemark:devices-ready");
  }, [page.data]);

  const [selected, setSelected] = useState<Set<string | number>>(new Set());
  const [dialog, setDialog] = useState<"bind" | "label" | "task" | null>(null);
  const toggle = (id: string | number) => {
    const next = new Set(selected);
    if (!next.delete(id)) next.add(id);
    setSelected(next);
  };

  const columns: Column<Device>[] = [
    { title: "Device name", cell: (d) => <a href={`/devices/${d.id}`}>{d.name}</a> },
    { title: "Serial number", cell: (d) => d.serial, class: "mono" },
    { title: "MAC", cell: (d) => d.mac, class: "mono" },
    { title: "IMEI", cell: (d) => d.imei ?? "—", class: "mono" },
    { title: "ICCID", cell: (d) => d.iccid ?? "—", class: "mono" },
    { title: "Model", cell: (d) => modelName(d.model_id) },
    { title: "Organisation", cell: (d) => organisationName(d.organisation_id) },
    { title: "License", cell: (d) => <Badge tone={licenseTone(d.license_state)}>{d.license_state}</Badge> },
    {
      title: "Online",
      cell: (d) => (
        <>
          <OnlineBadge online={d.online} /> <Time ms={d.last_seen_at} />
        </>
      ),
    },
    { title: "Firmware", cell: (d) => d.firmware_version ?? "—" },
    { title: "Task", cell: () => <span class="muted">none</span> },
    {
      title: "Labels",
      cell: (d) =>
        d.labels.map((l) => (
          <button type="button" class="chip" onClick={() => setFilter("label", l)} title="filter by this label">
            {l}
          </button>
        )),
    },
  ];

  return (
    <Page
      title="Devices"
      actions={
        isAdmin.value && (
          <a class="button" href="/import">
            Import devices
          </a>
        )
      }
    >
      <div class="filters" role="search">
        <input
          type="search"
          placeholder="Search name, serial, MAC, IMEI, ICCID"
          aria-label="search devices"
          value={searchText}
          onInput={(e) => setSearchText(valueOf(e))}
        />
        <select aria-label="model" value={filters.model_id} onChange={(e) => setFilter("model_id", valueOf(e))}>
          <option value="">All models</option>
          {deviceModels.value.map((m) => (
            <option value={m.id}>{m.name}</option>
          ))}
        </select>
        {organisations.value.length > 1 && (
          <select
            aria-label="organisation"
            value={filters.organisation_id}
            onChange={(e) => setFilter("organisation_id", valueOf(e))}
          >
            <option value="">All organisations</option>
            {organisations.value.map((o) => (
              <option value={o.id}>
                {o.name} ({o.kind})
              </option>
            ))}
          </select>
        )}
        <select
          aria-label="license state"
          value={filters.license_state}
          onChange={(e) => setFilter("license_state", valueOf(e))}
        >
          <option value="">Any license</option>
          {LICENSE_STATES.map((s) => (
            <option value={s}>{s}</option>
          ))}
        </select>
        <select aria-label="online" value={filters.online} onChange={(e) => setFilter("online", valueOf(e))}>
          <option value="">Online or not</option>
          <option value="true">Online</option>
          <option value="false">Offline</option>
        </select>
        {filters.label && (
          <button type="button" class="chip active" onClick={() => setFilter("label", "")}>
            label: {filters.label} ×
          </button>
        )}
        <select aria-label="sort" value={filters.sort} onChange={(e) => setFilter("sort", valueOf(e))}>
          {SORTS.map(([v, l]) => (
            <option value={v}>{l}</option>
          ))}
        </select>
      </div>
      {canRunTasks.value && selected.size > 0 && (
        <div class="bulk-bar" data-testid="bulk-bar">
          <span>{selected.size} selected</span>
          <button type="button" onClick={() => setDialog("task")}>
            Run task…
          </button>
          {isAdmin.value && (
            <>
              <button type="button" onClick={() => setDialog("bind")}>
                Bind license…
              </button>
              <button type="button" onClick={() => setDialog("label")}>
                Label…
              </button>
            </>
          )}
          <button type="button" class="link" onClick={() => setSelected(new Set())}>
            Clear selection
          </button>
        </div>
      )}
      <LoadState
        loaded={page}
        isEmpty={(p) => p.devices.length === 0}
        empty={
          Object.values(filters).some((v) => v && v !== "name")
            ? "No device matches these filters."
            : "No devices yet. Import them from the ERP or a CSV file."
        }
      >
        {(p) => (
          <>
            <Table
              testId="devices"
              columns={columns}
              rows={p.devices}
              rowKey={(d) => d.id}
              selected={canRunTasks.value ? selected : undefined}
              onToggle={toggle}
              onToggleAll={(all) => {
                const next = new Set(selected);
                for (const d of p.devices) all ? next.add(d.id) : next.delete(d.id);
                setSelected(next);
              }}
            />
            {pager(p.next_cursor)}
          </>
        )}
      </LoadState>
      {dialog === "task" && <BulkTaskDialog deviceIds={[...selected] as number[]} onClose={() => setDialog(null)} />}
      {dialog === "bind" && (
        <BindDialog
          deviceIds={[...selected] as number[]}
          onClose={() => setDialog(null)}
          onDone={() => {
            setSelected(new Set());
            page.reload();
          }}
        />
      )}
      {dialog === "label" && (
        <LabelDialog
          deviceIds={[...selected] as number[]}
          onClose={() => setDialog(null)}
          onDone={() => {
            setDialog(null);
            page.reload();
          }}
        />
      )}
    </Page>
  );
}

/** Up to `count` available keys of a service model, oldest first. */
async function availableKeys(serviceModelId: number, count: number): Promise<LicenseKey[]> {
  const found: LicenseKey[] = [];
  while (found.length < count) {
    const limit = Math.min(1000, count - found.length);
    const page = await api<LicenseKey[]>("/license-keys", {
      query: {
        state: "available",
        service_model_id: serviceModelId,
        after_id: found[found.length - 1]?.id,
        limit,
      },
    });
    found.push(...page);
    if (page.length < limit) break;
  }
  return found;
}

/** Binds one available key of the chosen service model to each selected device. */
export function BindDialog({
  deviceIds: chosen,
  onClose,
  onDone,
}: {
  deviceIds: number[];
  onClose: () => void;
  onDone: () => void;
}) {
  // The devices chosen when the dialog opened, whatever the list does meanwhile.
  const [deviceIds] = useState(chosen);
  const models = useLoad((signal) => api<ServiceModel[]>("/service-models", { signal }), []);
  const [modelId, setModelId] = useState("");
  const [progress, setProgress] = useState<{ done: number; failures: string[] } | null>(null);
  const form = useForm(
    async () => {
      const keys = await availableKeys(Number(modelId), deviceIds.length);
      if (keys.length < deviceIds.length) {
        throw new Error(
          `Only ${keys.length} available key(s) of this service model for ${deviceIds.length} device(s): generate or import more first.`,
        );
      }
      const failures: string[] = [];
      for (let i = 0; i < deviceIds.length; i++) {
        try {
          await api(`/license-keys/${keys[i].id}/bind`, { method: "POST", body: { device_id: deviceIds[i] } });
        } catch (e) {
          failures.push(`device ${deviceIds[i]}: ${(e as Error).message}`);
        }
        setProgress({ done: i + 1, failures: [...failures] });
      }
      onDone();
    },
    () => ({ service_model: modelId ? undefined : "Choose a service model." }),
  );
  return (
    <Modal title={`Bind a license to ${deviceIds.length} device(s)`} onClose={onClose}>
      <form onSubmit={form.submit} noValidate>
        <LoadState loaded={models} empty="No service models yet: the operator creates them.">
          {(list) => (
            <Field label="Service model" error={form.fieldError("service_model")}>
              <select name="service_model" value={modelId} onChange={(e) => setModelId(valueOf(e))}>
                <option value="">Choose…</option>
                {list.map((m) => (
                  <option value={m.id}>
                    {m.name} ({m.duration_days} days)
                  </option>
                ))}
              </select>
            </Field>
          )}
        </LoadState>
        {progress && (
          <div class="progress-text" role="status">
            Bound {progress.done - progress.failures.length} of {deviceIds.length}
            {progress.failures.length > 0 && (
              <ul class="rejections">
                {progress.failures.map((f) => (
                  <li>{f}</li>
                ))}
              </ul>
            )}
          </div>
        )}
        <FormError form={form} />
        <DialogButtons onCancel={onClose} busy={form.busy} disabled={progress?.done === deviceIds.length} label="Bind" cancelLabel={progress?.done === deviceIds.length ? "Close" : "Cancel"} />
      </form>
    </Modal>
  );
}

function LabelDialog({ deviceIds, onClose, onDone }: { deviceIds: number[]; onClose: () => void; onDone: () => void }) {
  const [label, setLabel] = useState("");
  const [remove, setRemove] = useState(false);
  const form = useForm(
    async () => {
      const l = label.trim();
      await api("/devices/labels", {
        method: "POST",
        body: { device_ids: deviceIds, add: remove ? [] : [l], remove: remove ? [l] : [] },
      });
      onDone();
    },
    () => ({
      add: !label.trim()
        ? "Enter a label."
        : /[,;|]/.test(label) || label.trim().length > 64
          ? "At most 64 characters, without , ; or |."
          : undefined,
    }),
  );
  return (
    <Modal title={`Label ${deviceIds.length} device(s)`} onClose={onClose}>
      <form onSubmit={form.submit} noValidate>
        <Field label="Label" error={form.fieldError("add") ?? form.fieldError("remove")}>
          <input name="label" value={label} onInput={(e) => setLabel(valueOf(e))} autofocus />
        </Field>
        <label class="check-line">
          <input type="checkbox" checked={remove} onChange={(e) => setRemove(e.currentTarget.checked)} /> Remove this
          label instead of adding it
        </label>
        <FormError form={form} />
        <DialogButtons onCancel={onClose} busy={form.busy} label={remove ? "Remove label" : "Add label"} />
      </form>
    </Modal>
  );
}

