import { useState } from "preact/hooks";
import { api } from "../api";
import { deviceModels, isOperator, refreshLookups } from "../session";
import { Field, FormError, Modal, Page, Table, useForm, valueOf , DialogButtons } from "../components/ui";

export function DeviceModels() {
  const [creating, setCreating] = useState(false);
  const models = deviceModels.value;
  return (
    <Page
      title="Device models"
      actions={
        isOperator.value && (
          <button type="button" class="primary" onClick={() => setCreating(true)}>
            New device model
          </button>
        )
      }
    >
      {models.length === 0 ? (
        <div class="empty">No device models yet. The operator adds them before devices can be imported.</div>
      ) : (
        <Table
          testId="device-models"
          columns={[
            { title: "Name", cell: (m) => m.name },
            { title: "Vendor", cell: (m) => m.vendor },
            { title: "Hardware revision", cell: (m) => m.hardware_revision || "—" },
            { title: "Topic segment", cell: (m) => <code>dwr/{m.topic_segment}/…</code> },
            { title: "Description", cell: (m) => m.description || "—" },
            { title: "Devices", cell: (m) => <a href={`/devices?model_id=${m.id}`}>list ›</a> },
          ]}
          rows={models}
          rowKey={(m) => m.id}
        />
      )}
      {creating && <ModelDialog onClose={() => setCreating(false)} />}
    </Page>
  );
}

function ModelDialog({ onClose }: { onClose: () => void }) {
  const [v, setV] = useState({ name: "", vendor: "", hardware_revision: "", topic_segment: "", description: "" });
  const set = (k: keyof typeof v) => (e: Parameters<typeof valueOf>[0]) => setV({ ...v, [k]: valueOf(e) });
  const form = useForm(
    async () => {
      await api("/device-models", { method: "POST", body: v });
      await refreshLookups();
      onClose();
    },
    () => ({
      name: v.name.trim() ? undefined : "Name the model.",
      vendor: v.vendor.trim() ? undefined : "Name the vendor.",
      topic_segment: /^[a-z0-9-]+$/.test(v.topic_segment)
        ? undefined
        : "Lower-case letters, digits and dashes: it becomes part of the MQTT topics.",
    }),
  );
  return (
    <Modal title="New device model" onClose={onClose}>
      <form onSubmit={form.submit} noValidate class="form-grid">
        <Field label="Name" error={form.fieldError("name")}>
          <input name="name" value={v.name} onInput={set("name")} autofocus />
        </Field>
        <Field label="Vendor" error={form.fieldError("vendor")}>
          <input name="vendor" value={v.vendor} onInput={set("vendor")} />
        </Field>
        <Field label="Hardware revision" error={form.fieldError("hardware_revision")}>
          <input name="hardware_revision" value={v.hardware_revision} onInput={set("hardware_revision")} />
        </Field>
        <Field label="Topic segment" error={form.fieldError("topic_segment")} hint="e.g. 311-a1">
          <input name="topic_segment" value={v.topic_segment} onInput={set("topic_segment")} />
        </Field>
        <Field label="Description" error={form.fieldError("description")}>
          <input name="description" value={v.description} onInput={set("description")} />
        </Field>
        <FormError form={form} />
        <DialogButtons onCancel={onClose} busy={form.busy} label="Create model" />
      </form>
    </Modal>
  );
}
