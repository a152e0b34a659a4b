import { useState } from "preact/hooks";
import { api } from "../api";
import { organisationName, organisations, refreshLookups } from "../session";
import { Field, FormError, Modal, Page, Table, formatTime, useForm, valueOf , DialogButtons } from "../components/ui";

const TITLES = { integrator: "System integrators", customer: "Business customers" };
const PARENT_KIND = { integrator: "operator", customer: "integrator" } as const;

export function Organisations({ kind }: { kind: "integrator" | "customer" }) {
  const [creating, setCreating] = useState(false);
  const rows = organisations.value.filter((o) => o.kind === kind);
  const parents = organisations.value.filter((o) => o.kind === PARENT_KIND[kind]);
  const noun = kind === "integrator" ? "system integrator" : "business customer";
  return (
    <Page
      title={TITLES[kind]}
      actions={
        parents.length > 0 && (
          <button type="button" class="primary" onClick={() => setCreating(true)}>
            New {noun}
          </button>
        )
      }
    >
      {rows.length === 0 ? (
        <div class="empty">No {noun}s yet.</div>
      ) : (
        <Table
          testId="organisations"
          columns={[
            { title: "Name", cell: (o) => o.name },
            { title: "Belongs to", cell: (o) => organisationName(o.parent_id) },
            { title: "Since", cell: (o) => formatTime(o.created_at) },
            { title: "Devices", cell: (o) => <a href={`/devices?organisation_id=${o.id}`}>list ›</a> },
          ]}
          rows={rows}
          rowKey={(o) => o.id}
        />
      )}
      {creating && <OrganisationDialog kind={kind} onClose={() => setCreating(false)} />}
    </Page>
  );
}

function OrganisationDialog({ kind, onClose }: { kind: "integrator" | "customer"; onClose: () => void }) {
  const parents = organisations.value.filter((o) => o.kind === PARENT_KIND[kind]);
  const [name, setName] = useState("");
  const [parentId, setParentId] = useState(String(parents[0]?.id ?? ""));
  const form = useForm(
    async () => {
      await api("/organisations", { method: "POST", body: { name: name.trim(), parent_id: Number(parentId) } });
      await refreshLookups();
      onClose();
    },
    () => ({ name: name.trim() ? undefined : "Enter the name." }),
  );
  return (
    <Modal title={kind === "integrator" ? "New system integrator" : "New business customer"} onClose={onClose}>
      <form onSubmit={form.submit} noValidate>
        <Field label="Name" error={form.fieldError("name")}>
          <input name="name" value={name} onInput={(e) => setName(valueOf(e))} autofocus />
        </Field>
        {parents.length > 1 && (
          <Field label="Belongs to" error={form.fieldError("parent_id")}>
            <select value={parentId} onChange={(e) => setParentId(valueOf(e))}>
              {parents.map((p) => (
                <option value={p.id}>{p.name}</option>
              ))}
            </select>
          </Field>
        )}
        <FormError form={form} />
        <DialogButtons onCancel={onClose} busy={form.busy} label="Create" />
      </form>
    </Modal>
  );
}
