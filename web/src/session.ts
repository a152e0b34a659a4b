// Who is logged in, and the small lookups every screen names things with
// (organisations, device models), loaded once per login.

import { signal, computed } from "@preact/signals";
import { api, setCsrfToken, whenUnauthenticated, type DeviceModel, type Organisation, type Session } from "./api";

/** undefined: not known yet; null: nobody is logged in. */
export const session = signal<Session | null | undefined>(undefined);
export const organisations = signal<Organisation[]>([]);
export const deviceModels = signal<DeviceModel[]>([]);

export const isAdmin = computed(() => {
  const role = session.value?.role;
  return role === "operator-admin" || role === "integrator-admin" || role === "customer-admin";
});
/** Engineers and admins run remote tasks; viewers read them. */
export const canRunTasks = computed(() => !!session.value && session.value.role !== "viewer");
export const isOperator = computed(() => session.value?.role === "operator-admin");
export const myOrganisation = computed(() =>
  organisations.value.find((o) => o.id === session.value?.organisation_id),
);

export function organisationName(id: number | null | undefined): string {
  return organisations.value.find((o) => o.id === id)?.name ?? (id == null ? "—" : `#${id}`);
}

export function modelName(id: number | null | undefined): string {
  return deviceModels.value.find((m) => m.id === id)?.name ?? (id == null ? "all models" : `#${id}`);
}

export async function refreshLookups() {
  const [orgs, models] = await Promise.all([
    api<Organisation[]>("/organisations"),
    api<DeviceModel[]>("/device-models"),
  ]);
  organisations.value = orgs;
  deviceModels.value = models;
}

// Remembers that this browser logged in, so a first visit does not ask the
// server for a session it cannot have (a 401 in every newcomer's console).
const LOGGED_IN = "telemark.logged-in";

async function start(s: Session) {
  localStorage.setItem(LOGGED_IN, "1");
  setCsrfToken(s.csrf_token ?? null);
  await refreshLookups();
  session.value = s;
}

export async function restoreSession() {
  if (!localStorage.getItem(LOGGED_IN)) {
    session.value = null;
    return;
  }
  try {
    await start(await api<Session>("/session"));
  } catch {
    localStorage.removeItem(LOGGED_IN);
    session.value = null;
  }
}

export async function login(username: string, password: string) {
  await start(await api<Session>("/session", { method: "POST", body: { username, password } }));
}

export async function logout() {
  try {
    await api("/session", { method: "DELETE" });
  } finally {
    localStorage.removeItem(LOGGED_IN);
    setCsrfToken(null);
    session.value = null;
  }
}

whenUnauthenticated(() => {
  localStorage.removeItem(LOGGED_IN);
  setCsrfToken(null);
  session.value = null;
});
