import { useState } from "preact/hooks";
import { api, type ApiToken } from "../api";
import { session } from "../session";
import {
  Badge,
  ErrorBox,
  Field,
  FormError,
  LoadState,
  Page,
  ShownOnce,
  Table,
  formatTime,
  useForm,
  useLoad,
  valueOf,
  useAction,
} from "../components/ui";

export function Account() {
  return (
    <Page title={`Account: ${session.value?.username}`}>
      <div class="grid-2">
        <ChangePassword />
        <ApiTokens />
      </div>
    </Page>
  );
}

function ChangePassword() {
  const [current, setCurrent] = useState("");
  const [next, setNext] = useState("");
  const [again, setAgain] = useState("");
  const [done, setDone] = useState(false);
  const form = useForm(
    async () => {
      await api("/session/password", { method: "POST", body: { current_password: current, new_password: next } });
      setDone(true);
      setCurrent("");
      setNext("");
      setAgain("");
    },
    () => ({
      current_password: current ? undefined : "Enter your current password.",
      new_password: next.length >= 10 ? undefined : "At least 10 characters.",
      again: next === again ? undefined : "The two new passwords differ.",
    }),
  );
  return (
    <form class="card" onSubmit={form.submit} noValidate aria-label="change password">
      <h2>Change password</h2>
      <Field label="Current password" error={form.fieldError("current_password")}>
        <input name="current_password" type="password" autocomplete="current-password" value={current} onInput={(e) => setCurrent(valueOf(e))} />
      </Field>
      <Field label="New password" error={form.fieldError("new_password")} hint="at least 10 characters">
        <input name="new_password" type="password" autocomplete="new-password" value={next} onInput={(e) => setNext(valueOf(e))} />
      </Field>
      <Field label="New password again" error={form.fieldError("again")}>
        <input name="again" type="password" autocomplete="new-password" value={again} onInput={(e) => setAgain(valueOf(e))} />
      </Field>
      <FormError form={form} />
      {done && !form.error && <p class="ok" role="status">Password changed.</p>}
      <footer>
        <button type="submit" class="primary" disabled={form.busy}>
          Change password
        </button>
      </footer>
    </form>
  );
}

function ApiTokens() {
  const tokens = useLoad((signal) => api<ApiToken[]>("/tokens", { signal }), []);
  const [name, setName] = useState("");
  const [days, setDays] = useState("90");
  const [created, setCreated] = useState<ApiToken | null>(null);
  const { error, run } = useAction();
  const form = useForm(
    async () => {
      const body = { name: name.trim(), ...(days ? { expires_in_days: Number(days) } : {}) };
      setCreated(await api<ApiToken>("/tokens", { method: "POST", body }));
      setName("");
      tokens.reload();
    },
    () => ({ name: name.trim() ? undefined : "Name the token after the script that uses it." }),
  );
  const revoke = (t: ApiToken) => run(() => api(`/tokens/${t.id}`, { method: "DELETE" }), tokens.reload);
  return (
    <section class="card">
      <h2>API tokens</h2>
      <p class="hint">For scripts: send as <code>Authorization: Bearer tmk_…</code>. They act with your role.</p>
      <form onSubmit={form.submit} noValidate class="inline-form">
        <Field label="Name" error={form.fieldError("name")}>
          <input name="token_name" value={name} onInput={(e) => setName(valueOf(e))} />
        </Field>
        <Field label="Expires">
          <select name="token_expiry" value={days} onChange={(e) => setDays(valueOf(e))}>
            <option value="30">in 30 days</option>
            <option value="90">in 90 days</option>
            <option value="365">in a year</option>
            <option value="">never (until revoked)</option>
          </select>
        </Field>
        <button type="submit" disabled={form.busy}>
          Create token
        </button>
      </form>
      <FormError form={form} />
      {created?.token && <ShownOnce label={`Token “${created.name}”`} value={created.token} />}
      {error != null && <ErrorBox error={error} />}
      <LoadState loaded={tokens} empty="No API tokens.">
        {(list) => (
          <Table
            columns={[
              { title: "Name", cell: (t: ApiToken) => t.name },
              { title: "Expires", cell: (t) => (t.expires_at == null ? "never" : formatTime(t.expires_at)) },
              {
                title: "State",
                cell: (t) => {
                  const state = t.revoked ? "revoked" : t.expires_at != null && t.expires_at <= Date.now() ? "expired" : "active";
                  return <Badge tone={state === "active" ? "good" : "muted"}>{state}</Badge>;
                },
              },
              {
                title: "",
                cell: (t) =>
                  !t.revoked && (
                    <button type="button" class="danger" onClick={() => revoke(t)}>
                      Revoke
                    </button>
                  ),
              },
            ]}
            rows={list}
            rowKey={(t) => t.id}
          />
        )}
      </LoadState>
    </section>
  );
}
