import { useState } from "preact/hooks";
import { api, type Role, type User } from "../api";
import { organisationName, organisations, session } from "../session";
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
  useForm,
  useLoad,
  valueOf,
  DialogButtons,
  useAction,
} from "../components/ui";

/** The roles an organisation of each kind can give its users. */
const ROLES_BY_KIND: Record<string, Role[]> = {
  operator: ["operator-admin", "engineer", "viewer"],
  integrator: ["integrator-admin", "engineer", "viewer"],
  customer: ["customer-admin", "engineer", "viewer"],
};

export function Users() {
  const users = useLoad((signal) => api<User[]>("/users", { signal }), []);
  const [creating, setCreating] = useState(false);
  const { error, run } = useAction();
  const setDisabled = (u: User, disabled: boolean) =>
    run(() => api(`/users/${u.id}/state`, { method: "POST", body: { disabled } }), users.reload);
  return (
    <Page
      title="Users and roles"
      actions={
        <button type="button" class="primary" onClick={() => setCreating(true)}>
          New user
        </button>
      }
    >
      {error != null && <ErrorBox error={error} />}
      <LoadState loaded={users} empty="No users.">
        {(list) => (
          <Table
            testId="users"
            columns={[
              { title: "User name", cell: (u: User) => u.username },
              { title: "Role", cell: (u) => u.role },
              { title: "Organisation", cell: (u) => organisationName(u.organisation_id) },
              { title: "State", cell: (u) => <Badge tone={u.disabled ? "bad" : "good"}>{u.disabled ? "disabled" : "active"}</Badge> },
              { title: "Since", cell: (u) => formatTime(u.created_at) },
              {
                title: "",
                cell: (u) =>
                  u.id !== session.value?.user_id && (
                    <button type="button" onClick={() => setDisabled(u, !u.disabled)}>
                      {u.disabled ? "Enable" : "Disable"}
                    </button>
                  ),
              },
            ]}
            rows={list}
            rowKey={(u) => u.id}
          />
        )}
      </LoadState>
      {creating && (
        <UserDialog
          onClose={() => setCreating(false)}
          onDone={() => {
            setCreating(false);
            users.reload();
          }}
        />
      )}
    </Page>
  );
}

function UserDialog({ onClose, onDone }: { onClose: () => void; onDone: () => void }) {
  const [organisationId, setOrganisationId] = useState(String(session.value?.organisation_id ?? ""));
  const kind = organisations.value.find((o) => o.id === Number(organisationId))?.kind ?? "customer";
  const roles = ROLES_BY_KIND[kind];
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [role, setRole] = useState<Role>("viewer");
  const form = useForm(
    async () => {
      await api("/users", {
        method: "POST",
        body: { organisation_id: Number(organisationId), username: username.trim(), password, role },
      });
      onDone();
    },
    () => ({
      username: username.trim() ? undefined : "Enter a user name.",
      password: password.length >= 10 ? undefined : "At least 10 characters.",
      role: roles.includes(role) ? undefined : `A ${kind} cannot have a ${role}.`,
    }),
  );
  return (
    <Modal title="New user" onClose={onClose}>
      <form onSubmit={form.submit} noValidate>
        <Field label="Organisation" error={form.fieldError("organisation_id")}>
          <select name="organisation_id" value={organisationId} onChange={(e) => setOrganisationId(valueOf(e))}>
            {organisations.value.map((o) => (
              <option value={o.id}>
                {o.name} ({o.kind})
              </option>
            ))}
          </select>
        </Field>
        <Field label="User name" error={form.fieldError("username")}>
          <input name="username" autocomplete="off" value={username} onInput={(e) => setUsername(valueOf(e))} />
        </Field>
        <Field label="Initial password" error={form.fieldError("password")} hint="at least 10 characters">
          <input name="password" type="password" autocomplete="new-password" value={password} onInput={(e) => setPassword(valueOf(e))} />
        </Field>
        <Field label="Role" error={form.fieldError("role")}>
          <select name="role" value={role} onChange={(e) => setRole(valueOf(e) as Role)}>
            {roles.map((r) => (
              <option value={r}>{r}</option>
            ))}
          </select>
        </Field>
        <FormError form={form} />
        <DialogButtons onCancel={onClose} busy={form.busy} label="Create user" />
      </form>
    </Modal>
  );
}
