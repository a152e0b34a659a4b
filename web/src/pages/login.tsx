import { useState } from "preact/hooks";
import { login } from "../session";
import { Field, FormError, useForm, valueOf } from "../components/ui";

export function Login() {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const form = useForm(
    () => login(username.trim(), password),
    () => ({
      username: username.trim() ? undefined : "Enter your user name.",
      password: password ? undefined : "Enter your password.",
    }),
  );
  return (
    <div class="login">
      <form onSubmit={form.submit} class="card" aria-label="log in" noValidate>
        <h1>
          <img src="/favicon.svg" alt="" width="28" height="28" /> Telemark
        </h1>
        <Field label="User name" error={form.fieldError("username")}>
          <input
            name="username"
            autocomplete="username"
            autofocus
            value={username}
            onInput={(e) => setUsername(valueOf(e))}
          />
        </Field>
        <Field label="Password" error={form.fieldError("password")}>
          <input
            name="password"
            type="password"
            autocomplete="current-password"
            value={password}
            onInput={(e) => setPassword(valueOf(e))}
          />
        </Field>
        <FormError form={form} />
        <button type="submit" class="primary" disabled={form.busy}>
          {form.busy ? "Logging in…" : "Log in"}
        </button>
      </form>
    </div>
  );
}
